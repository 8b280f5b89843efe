//! The real syscall layer (`LinuxSystem`) on a real kernel, in private network namespaces.
//!
//! A veth pair joins two namespaces. In one, a small DHCP server built from init's own
//! packet code listens. In the other, init's client takes a lease through the real UDP
//! socket, and `SIOCSIFFLAGS`/`SIOCSIFADDR`/`SIOCSIFNETMASK`/`SIOCSIFMTU`/`SIOCADDRT` apply
//! it. Then `ip` reads the result back from the kernel. The test binary re-runs itself
//! under `unshare --net` for each side, so the host's network is never touched. It needs
//! root and iproute2; without them it says so and does nothing.

use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::process::Command;
use std::thread;
use std::time::Duration;

use cloister_init::dhcp::client::{DhcpClient, RenewOutcome, RetryPolicy};
use cloister_init::dhcp::packet::{ClientIdentity, DhcpPacket, MessageType, PacketBuilder, codes};
use cloister_init::linux::{LinuxSystem, udp_socket_on_interface};
use cloister_init::network::{Ipv4Config, apply_config};
use cloister_init::sys::System;

const INNER_ENV: &str = "CLOISTER_INIT_NETNS_INNER";
const CLIENT_MAC: [u8; 6] = [0x52, 0x54, 0x00, 0xaa, 0xbb, 0xcc];
const SERVER_ADDRESS: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 1);
const LEASED_ADDRESS: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 2);
const LEASE_MTU: u16 = 1400;

fn have(program: &str, arg: &str) -> bool {
    Command::new(program)
        .arg(arg)
        .output()
        .is_ok_and(|o| o.status.success())
}

#[test]
fn dhcp_and_interface_setup_work_on_a_real_kernel() {
    if !rustix::process::geteuid().is_root() || !have("ip", "-V") || !have("unshare", "--version") {
        eprintln!("skipped: needs root, iproute2 and unshare");
        return;
    }
    let exe = std::env::current_exe().unwrap();
    let output = Command::new("unshare")
        .arg("--net")
        .arg(exe)
        .args(["--exact", "inner_dhcp_client", "--ignored", "--nocapture"])
        .env(INNER_ENV, "client")
        .output()
        .unwrap();
    let log = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success(), "{log}");
    assert!(log.contains("1 passed"), "{log}");
}

fn ip(args: &[&str]) -> String {
    let output = Command::new("ip").args(args).output().unwrap();
    assert!(
        output.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Answers `requests` DHCP messages on `socket`: DISCOVER with an OFFER, REQUEST with an
/// ACK, both broadcast to port 68.
fn serve(socket: UdpSocket, requests: usize) {
    socket
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut buf = [0u8; 1500];
    for _ in 0..requests {
        let len = socket.recv(&mut buf).unwrap();
        let request = DhcpPacket::parse(&buf[..len]).unwrap();
        let kind = match request.message_type {
            Some(MessageType::Discover) => MessageType::Offer,
            Some(MessageType::Request) => MessageType::Ack,
            other => panic!("unexpected {other:?}"),
        };
        let mut reply = PacketBuilder::new(true, kind, request.xid, request.mac().unwrap())
            .yiaddr(LEASED_ADDRESS)
            .broadcast();
        reply.address_option(codes::SERVER_ID, &[SERVER_ADDRESS]);
        reply.address_option(codes::SUBNET_MASK, &[Ipv4Addr::new(255, 255, 255, 0)]);
        reply.address_option(codes::ROUTER, &[SERVER_ADDRESS]);
        reply.option(codes::LEASE_TIME, &600u32.to_be_bytes());
        reply.option(codes::MTU, &LEASE_MTU.to_be_bytes());
        // No DNS option: applying one would write the host's /etc/resolv.conf.
        let to = SocketAddrV4::new(Ipv4Addr::BROADCAST, 68);
        socket.send_to(&reply.finish(), to).unwrap();
    }
}

#[test]
#[ignore = "run by inner_dhcp_client inside its own unshare --net"]
fn inner_dhcp_server() {
    assert_eq!(
        std::env::var(INNER_ENV).as_deref(),
        Ok("server"),
        "only inside unshare --net"
    );
    // Wait for the client's side to move veth-s into this namespace.
    for _ in 0..200 {
        let probe = Command::new("ip")
            .args(["link", "show", "veth-s"])
            .output()
            .unwrap();
        if probe.status.success() {
            break;
        }
        thread::sleep(Duration::from_millis(50));
    }
    ip(&["addr", "add", "10.77.0.1/24", "dev", "veth-s"]);
    ip(&["link", "set", "veth-s", "up"]);
    // DISCOVER, REQUEST, then the renewal's REQUEST.
    serve(udp_socket_on_interface("veth-s", 67).unwrap(), 3);
}

#[test]
#[ignore = "run by dhcp_and_interface_setup_work_on_a_real_kernel inside unshare --net"]
fn inner_dhcp_client() {
    assert_eq!(
        std::env::var(INNER_ENV).as_deref(),
        Ok("client"),
        "only inside unshare --net"
    );
    ip(&[
        "link",
        "add",
        "veth-c",
        "address",
        "52:54:00:aa:bb:cc",
        "type",
        "veth",
        "peer",
        "name",
        "veth-s",
    ]);
    // The server gets its own namespace, as a DHCP server on a real link is another host.
    let exe = std::env::current_exe().unwrap();
    let mut server = Command::new("unshare")
        .arg("--net")
        .arg(exe)
        .args(["--exact", "inner_dhcp_server", "--ignored", "--nocapture"])
        .env(INNER_ENV, "server")
        .spawn()
        .unwrap();
    // `unshare` enters its new namespace only after it has started: moving the link before
    // that would leave it in ours. Wait until the server's namespace is not ours.
    let ours = std::fs::read_link("/proc/self/ns/net").unwrap();
    let theirs = format!("/proc/{}/ns/net", server.id());
    for _ in 0..400 {
        if std::fs::read_link(&theirs).is_ok_and(|ns| ns != ours) {
            break;
        }
        thread::sleep(Duration::from_millis(25));
    }
    assert_ne!(
        std::fs::read_link(&theirs).unwrap(),
        ours,
        "the server never entered its own network namespace"
    );
    ip(&["link", "set", "veth-s", "netns", &server.id().to_string()]);

    let system = LinuxSystem;
    system.interface_up("lo").unwrap();
    system.interface_up("veth-c").unwrap();
    assert!(ip(&["link", "show", "veth-c"]).contains(",UP"));

    let mut transport = system.open_dhcp_transport("veth-c").unwrap();
    let identity = ClientIdentity {
        mac: CLIENT_MAC,
        hostname: Some("netns".into()),
    };
    let retry = RetryPolicy {
        attempts: 4,
        first_timeout_ms: 2_000,
        max_timeout_ms: 4_000,
    };
    let mut client = DhcpClient::new(identity, retry, 0x5eed);
    let lease = client.acquire(&mut transport, &system).unwrap();
    assert_eq!(lease.address, LEASED_ADDRESS);
    assert_eq!(lease.prefix_len, 24);
    assert_eq!(lease.lease_time_s, Some(600));

    let config = Ipv4Config::from_lease(&lease, &[]);
    assert!(config.dns_servers.is_empty());
    assert_eq!(apply_config(&system, "veth-c", &config), 0);
    assert!(ip(&["-4", "-o", "addr", "show", "dev", "veth-c"]).contains("inet 10.77.0.2/24"));
    assert!(ip(&["-4", "route", "show", "default"]).contains("default via 10.77.0.1 dev veth-c"));
    assert!(ip(&["link", "show", "veth-c"]).contains(&format!("mtu {LEASE_MTU}")));

    // Renewal from the configured address, through the same socket.
    match client.renew(&mut transport, &system, &lease).unwrap() {
        RenewOutcome::Extended(renewed) => assert_eq!(renewed.address, LEASED_ADDRESS),
        other => panic!("renewal: {other:?}"),
    }
    assert!(server.wait().unwrap().success(), "the DHCP server failed");
}
