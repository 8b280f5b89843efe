//! Fuzzes init's DHCP parser with arbitrary datagrams, as a hostile network would send them.
//! A parsed packet must respect the parser's limits, and turning it into a lease and a
//! resolver file must not panic or let the network add lines to /etc/resolv.conf.
#![no_main]

use std::net::Ipv4Addr;

use cloister_init::dhcp::client::Lease;
use cloister_init::dhcp::packet::{
    CLASSLESS_ROUTES_MAX, DHCP_PACKET_MAX_BYTES, DNS_SERVERS_MAX, DhcpPacket, NAME_MAX_BYTES,
    ROUTERS_MAX,
};
use cloister_init::network::Ipv4Config;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(packet) = DhcpPacket::parse(data) else {
        return;
    };
    assert!(data.len() <= DHCP_PACKET_MAX_BYTES);
    assert!(packet.routers.len() <= ROUTERS_MAX);
    assert!(packet.dns_servers.len() <= DNS_SERVERS_MAX);
    assert!(packet.classless_routes.len() <= CLASSLESS_ROUTES_MAX);
    assert!(packet.classless_routes.iter().all(|r| r.prefix_len <= 32));
    assert!(
        packet
            .domain_name
            .as_ref()
            .is_none_or(|d| d.len() <= NAME_MAX_BYTES * 3)
    );
    let Ok(lease) = Lease::from_ack(&packet, Ipv4Addr::new(10, 0, 2, 2), 0) else {
        return;
    };
    assert!(lease.prefix_len <= 32);
    assert!(lease.renewal_time_s <= lease.rebinding_time_s);
    let _ = lease.to_record();
    let config = Ipv4Config::from_lease(&lease, &[]);
    let resolv = config.resolv_conf();
    assert!(
        resolv
            .lines()
            .skip(1)
            .all(|line| line.starts_with("nameserver ") || line.starts_with("search "))
    );
});
