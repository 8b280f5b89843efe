//! Entry points for the fuzz targets in `fuzz/`, and the stable tests that run them on real
//! packets and deterministic mutations of them. A body panics only when an invariant breaks;
//! it never touches the machine.

use std::net::Ipv4Addr;

use crate::dhcp::client::Lease;
use crate::dhcp::packet::{
    CLASSLESS_ROUTES_MAX, DHCP_PACKET_MAX_BYTES, DNS_SERVERS_MAX, DhcpPacket, NAME_MAX_BYTES,
    ROUTERS_MAX,
};
use crate::network::Ipv4Config;

/// A datagram from a hostile network. A parsed packet respects the parser's limits; turning
/// it into a lease and a resolver file cannot panic, nor add lines to /etc/resolv.conf.
pub fn dhcp_packet(data: &[u8]) {
    let Ok(packet) = DhcpPacket::parse(data) else {
        return;
    };
    assert!(data.len() <= DHCP_PACKET_MAX_BYTES);
    assert!(packet.routers.len() <= ROUTERS_MAX);
    assert!(packet.dns_servers.len() <= DNS_SERVERS_MAX);
    assert!(packet.classless_routes.len() <= CLASSLESS_ROUTES_MAX);
    assert!(packet.classless_routes.iter().all(|r| r.prefix_len <= 32));
    // Invalid UTF-8 bytes become U+FFFD, three bytes each.
    for name in [&packet.domain_name, &packet.hostname]
        .into_iter()
        .flatten()
    {
        assert!(name.len() <= NAME_MAX_BYTES * 3);
    }
    let Ok(lease) = Lease::from_ack(&packet, Ipv4Addr::new(10, 0, 2, 2), 0) else {
        return;
    };
    assert!(lease.prefix_len <= 32);
    assert!(lease.renewal_time_s <= lease.rebinding_time_s);
    assert_eq!(lease.to_record().lines().count(), 8);
    let resolv = Ipv4Config::from_lease(&lease, &[]).resolv_conf();
    assert!(
        resolv
            .lines()
            .skip(1)
            .all(|line| line.starts_with("nameserver ") || line.starts_with("search "))
    );
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;
    use crate::dhcp::packet::{ClientIdentity, MessageType, PacketBuilder, codes};

    const MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];

    /// An ACK with every option init reads, as a cloud's DHCP server might send it.
    fn full_ack() -> Vec<u8> {
        let mut b = PacketBuilder::new(true, MessageType::Ack, 9, MAC)
            .yiaddr(Ipv4Addr::new(10, 128, 0, 5))
            .broadcast();
        b.address_option(codes::SUBNET_MASK, &[Ipv4Addr::new(255, 255, 255, 255)]);
        b.address_option(codes::ROUTER, &[Ipv4Addr::new(10, 128, 0, 1)]);
        b.address_option(codes::DNS, &[Ipv4Addr::new(169, 254, 169, 254)]);
        b.address_option(codes::SERVER_ID, &[Ipv4Addr::new(169, 254, 169, 254)]);
        b.option(
            codes::CLASSLESS_ROUTES,
            &[32, 10, 128, 0, 1, 0, 0, 0, 0, 0, 10, 128, 0, 1],
        );
        b.option(codes::LEASE_TIME, &3600u32.to_be_bytes());
        b.option(codes::RENEWAL_TIME, &1800u32.to_be_bytes());
        b.option(codes::REBINDING_TIME, &3150u32.to_be_bytes());
        b.option(codes::MTU, &1460u16.to_be_bytes());
        b.option(codes::DOMAIN_NAME, b"c.example.internal");
        b.option(codes::HOSTNAME, b"box");
        b.finish()
    }

    #[test]
    fn fuzz_body_survives_truncations_and_byte_mutations() {
        let identity = ClientIdentity {
            mac: MAC,
            hostname: Some("cloister".into()),
        };
        let seeds = [
            full_ack(),
            identity.discover(1, 0),
            identity.request_renewal(2, Ipv4Addr::new(10, 0, 2, 15)),
        ];
        for seed in &seeds {
            dhcp_packet(seed);
            for len in 0..=seed.len() {
                dhcp_packet(&seed[..len]);
            }
            for i in 0..seed.len() {
                for value in [0u8, 1, 2, 4, 32, 33, 52, 121, 128, 255] {
                    let mut mutated = seed.clone();
                    mutated[i] = value;
                    dhcp_packet(&mutated);
                }
            }
        }
    }

    #[test]
    fn fuzz_body_accepts_the_full_ack() {
        let packet = DhcpPacket::parse(&full_ack()).unwrap();
        assert_eq!(packet.classless_routes.len(), 2);
        assert_eq!(packet.hostname.as_deref(), Some("box"));
        dhcp_packet(&full_ack());
    }
}
