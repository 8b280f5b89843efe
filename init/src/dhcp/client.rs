//! The DHCPv4 client state machine: DISCOVER, OFFER, REQUEST, ACK (or NAK), with timeouts
//! and retries, and the renewal of a lease.
//!
//! It speaks through a [`DhcpTransport`] and reads time from a [`Clock`], so every path
//! (silence, NAK, a stranger's reply, garbage) is tested with the fake. It never configures
//! the interface itself: it returns a [`Lease`] and the network module applies it.

use std::io;
use std::net::Ipv4Addr;

use super::packet::{
    ClasslessRoute, ClientIdentity, DHCP_PACKET_MAX_BYTES, DhcpPacket, MessageType, mask_prefix_len,
};
use crate::sys::{Clock, DhcpTransport};

/// How many DISCOVER rounds before giving up.
pub const DHCP_ATTEMPTS: u32 = 5;
/// How long the first round waits for each answer.
pub const DHCP_FIRST_TIMEOUT_MS: u64 = 1_000;
/// The cap on the doubling wait.
pub const DHCP_MAX_TIMEOUT_MS: u64 = 8_000;
/// The shortest lease init accepts; shorter ones are stretched to this for renewal timing.
pub const LEASE_MIN_S: u32 = 60;

/// Retries and timeouts of one acquisition.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// DISCOVER rounds.
    pub attempts: u32,
    /// Wait for an answer in the first round; doubles each round.
    pub first_timeout_ms: u64,
    /// Cap on that wait.
    pub max_timeout_ms: u64,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            attempts: DHCP_ATTEMPTS,
            first_timeout_ms: DHCP_FIRST_TIMEOUT_MS,
            max_timeout_ms: DHCP_MAX_TIMEOUT_MS,
        }
    }
}

/// An address lease, as the server's ACK gave it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lease {
    /// The assigned address.
    pub address: Ipv4Addr,
    /// Its prefix length (from option 1, or the address class when absent).
    pub prefix_len: u8,
    /// Option 3.
    pub routers: Vec<Ipv4Addr>,
    /// Option 121; when present it replaces the routers (RFC 3442).
    pub classless_routes: Vec<ClasslessRoute>,
    /// Option 6.
    pub dns_servers: Vec<Ipv4Addr>,
    /// Option 15.
    pub domain_name: Option<String>,
    /// Option 26.
    pub mtu: Option<u16>,
    /// The server that granted it.
    pub server_id: Ipv4Addr,
    /// Lease length in seconds; `None` for an infinite lease.
    pub lease_time_s: Option<u32>,
    /// T1: when to start renewing, seconds after `obtained_at_ms`.
    pub renewal_time_s: u32,
    /// T2: when to start rebinding.
    pub rebinding_time_s: u32,
    /// `CLOCK_BOOTTIME` when the ACK arrived.
    pub obtained_at_ms: u64,
}

/// An ACK that cannot become a lease.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LeaseError {
    #[error("assigned address {0} is not a unicast address")]
    BadAddress(Ipv4Addr),
    #[error("subnet mask {0} is not contiguous")]
    BadSubnetMask(Ipv4Addr),
}

/// The prefix of an address's class, for servers that send no subnet mask.
fn classful_prefix_len(address: Ipv4Addr) -> u8 {
    match address.octets()[0] {
        0..=127 => 8,
        128..=191 => 16,
        _ => 24,
    }
}

impl Lease {
    /// Builds a lease from an ACK received at `now_ms`.
    pub fn from_ack(
        ack: &DhcpPacket,
        server_id: Ipv4Addr,
        now_ms: u64,
    ) -> Result<Self, LeaseError> {
        let address = ack.yiaddr;
        if address.is_unspecified()
            || address.is_broadcast()
            || address.is_multicast()
            || address.is_loopback()
        {
            return Err(LeaseError::BadAddress(address));
        }
        let prefix_len = match ack.subnet_mask {
            Some(mask) => mask_prefix_len(mask).ok_or(LeaseError::BadSubnetMask(mask))?,
            None => classful_prefix_len(address),
        };
        let lease_time_s = ack
            .lease_time_s
            .filter(|t| *t != u32::MAX)
            .map(|t| t.max(LEASE_MIN_S));
        let (renewal_time_s, rebinding_time_s) = match lease_time_s {
            Some(lease) => {
                let t2 = ack
                    .rebinding_time_s
                    .filter(|t2| *t2 < lease)
                    .unwrap_or(lease / 8 * 7);
                let t1 = ack
                    .renewal_time_s
                    .filter(|t1| *t1 < t2)
                    .unwrap_or(lease / 2)
                    .min(t2);
                (t1, t2)
            }
            None => (u32::MAX, u32::MAX),
        };
        Ok(Self {
            address,
            prefix_len,
            routers: ack.routers.clone(),
            classless_routes: ack.classless_routes.clone(),
            dns_servers: ack.dns_servers.clone(),
            domain_name: ack.domain_name.clone(),
            mtu: ack.mtu,
            server_id,
            lease_time_s,
            renewal_time_s,
            rebinding_time_s,
            obtained_at_ms: now_ms,
        })
    }

    fn at_ms(&self, seconds: u32) -> u64 {
        self.obtained_at_ms
            .saturating_add(u64::from(seconds) * 1000)
    }

    /// `CLOCK_BOOTTIME` at T1, or `None` for an infinite lease.
    pub fn renew_at_ms(&self) -> Option<u64> {
        self.lease_time_s.map(|_| self.at_ms(self.renewal_time_s))
    }

    /// `CLOCK_BOOTTIME` at T2, or `None` for an infinite lease.
    pub fn rebind_at_ms(&self) -> Option<u64> {
        self.lease_time_s.map(|_| self.at_ms(self.rebinding_time_s))
    }

    /// `CLOCK_BOOTTIME` when the lease runs out, or `None` for an infinite lease.
    pub fn expires_at_ms(&self) -> Option<u64> {
        self.lease_time_s.map(|t| self.at_ms(t))
    }

    /// The lease as `KEY=value` lines, for `/run/cloister/dhcp-lease`.
    pub fn to_record(&self) -> String {
        let list = |addresses: &[Ipv4Addr]| {
            addresses
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(",")
        };
        let lease = self
            .lease_time_s
            .map_or_else(|| "infinite".to_owned(), |t| t.to_string());
        format!(
            "ADDRESS={}/{}\nROUTERS={}\nDNS={}\nSERVER={}\nLEASE_TIME_S={}\n\
             RENEWAL_TIME_S={}\nREBINDING_TIME_S={}\nOBTAINED_BOOTTIME_MS={}\n",
            self.address,
            self.prefix_len,
            list(&self.routers),
            list(&self.dns_servers),
            self.server_id,
            lease,
            self.renewal_time_s,
            self.rebinding_time_s,
            self.obtained_at_ms,
        )
    }
}

/// Why no lease was obtained.
#[derive(Debug, thiserror::Error)]
pub enum DhcpError {
    #[error("no DHCP lease after {attempts} attempts")]
    NoLease { attempts: u32 },
    #[error("DHCP socket failed")]
    Io(#[from] io::Error),
}

/// What a renewal attempt gave.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RenewOutcome {
    /// The server extended the lease (the address may differ if it moved us).
    Extended(Lease),
    /// The server refused (NAK): the address must be given up.
    Refused,
    /// No answer in time.
    NoAnswer,
}

/// A DHCP client for one interface.
#[derive(Debug)]
pub struct DhcpClient {
    identity: ClientIdentity,
    retry: RetryPolicy,
    next_xid: u32,
    started_ms: Option<u64>,
}

enum Wanted {
    Offer,
    AckFrom(Ipv4Addr),
}

impl DhcpClient {
    /// A client with the given identity; `xid_seed` should be random (it starts the
    /// transaction ids, which replies must echo).
    pub fn new(identity: ClientIdentity, retry: RetryPolicy, xid_seed: u32) -> Self {
        Self {
            identity,
            retry,
            next_xid: xid_seed,
            started_ms: None,
        }
    }

    fn take_xid(&mut self) -> u32 {
        let xid = self.next_xid;
        self.next_xid = self.next_xid.wrapping_add(0x9e37_79b9);
        xid
    }

    fn secs(&self, clock: &impl Clock) -> u16 {
        let elapsed_ms = clock
            .boottime_ms()
            .saturating_sub(self.started_ms.unwrap_or(0));
        u16::try_from(elapsed_ms / 1000).unwrap_or(u16::MAX)
    }

    /// Runs DISCOVER/OFFER/REQUEST/ACK until a lease is granted or the attempts run out.
    /// A NAK, a bad ACK or silence starts a new round with a longer wait.
    pub fn acquire(
        &mut self,
        transport: &mut impl DhcpTransport,
        clock: &impl Clock,
    ) -> Result<Lease, DhcpError> {
        self.started_ms = Some(clock.boottime_ms());
        let mut timeout_ms = self.retry.first_timeout_ms;
        for attempt in 1..=self.retry.attempts {
            match self.one_round(transport, clock, timeout_ms)? {
                Some(lease) => return Ok(lease),
                None => tracing::info!(attempt, timeout_ms, "no DHCP lease yet, retrying"),
            }
            timeout_ms = (timeout_ms * 2).min(self.retry.max_timeout_ms);
        }
        Err(DhcpError::NoLease {
            attempts: self.retry.attempts,
        })
    }

    fn one_round(
        &mut self,
        transport: &mut impl DhcpTransport,
        clock: &impl Clock,
        timeout_ms: u64,
    ) -> Result<Option<Lease>, DhcpError> {
        let xid = self.take_xid();
        transport.send(&self.identity.discover(xid, self.secs(clock)))?;
        let Some(offer) = self.wait_for(transport, clock, xid, &Wanted::Offer, timeout_ms)? else {
            return Ok(None);
        };
        let Some(server) = offer.server_id else {
            return Ok(None);
        };
        tracing::info!(offered = %offer.yiaddr, %server, "DHCP offer");
        let request = self
            .identity
            .request_offer(xid, self.secs(clock), offer.yiaddr, server);
        transport.send(&request)?;
        let Some(answer) =
            self.wait_for(transport, clock, xid, &Wanted::AckFrom(server), timeout_ms)?
        else {
            return Ok(None);
        };
        if answer.message_type == Some(MessageType::Nak) {
            tracing::warn!(%server, "DHCP server refused the request (NAK)");
            return Ok(None);
        }
        match Lease::from_ack(&answer, server, clock.boottime_ms()) {
            Ok(lease) => Ok(Some(lease)),
            Err(error) => {
                tracing::warn!("DHCP ACK unusable: {error}");
                Ok(None)
            }
        }
    }

    /// Asks the lease's server to extend it (RENEWING; the reply comes to our address).
    pub fn renew(
        &mut self,
        transport: &mut impl DhcpTransport,
        clock: &impl Clock,
        lease: &Lease,
    ) -> Result<RenewOutcome, DhcpError> {
        let xid = self.take_xid();
        transport.send(&self.identity.request_renewal(xid, lease.address))?;
        let wanted = Wanted::AckFrom(lease.server_id);
        let Some(answer) =
            self.wait_for(transport, clock, xid, &wanted, self.retry.max_timeout_ms)?
        else {
            return Ok(RenewOutcome::NoAnswer);
        };
        if answer.message_type == Some(MessageType::Nak) {
            return Ok(RenewOutcome::Refused);
        }
        let server = answer.server_id.unwrap_or(lease.server_id);
        match Lease::from_ack(&answer, server, clock.boottime_ms()) {
            Ok(extended) => Ok(RenewOutcome::Extended(extended)),
            Err(error) => {
                tracing::warn!("DHCP renewal ACK unusable: {error}");
                Ok(RenewOutcome::NoAnswer)
            }
        }
    }

    /// Waits until `timeout_ms` has passed for a reply to `xid` of the wanted kind, for our
    /// hardware address. Everything else (garbage, other clients' replies, requests from
    /// other clients, other servers' ACKs) is dropped.
    fn wait_for(
        &self,
        transport: &mut impl DhcpTransport,
        clock: &impl Clock,
        xid: u32,
        wanted: &Wanted,
        timeout_ms: u64,
    ) -> io::Result<Option<DhcpPacket>> {
        let deadline_ms = clock.boottime_ms().saturating_add(timeout_ms);
        let mut buf = vec![0u8; DHCP_PACKET_MAX_BYTES + 1];
        loop {
            let remaining_ms = deadline_ms.saturating_sub(clock.boottime_ms());
            if remaining_ms == 0 {
                return Ok(None);
            }
            let Some(len) = transport.recv(&mut buf, remaining_ms)? else {
                return Ok(None);
            };
            let packet = match DhcpPacket::parse(&buf[..len.min(buf.len())]) {
                Ok(packet) if len <= DHCP_PACKET_MAX_BYTES => packet,
                Ok(_) => continue,
                Err(error) => {
                    tracing::debug!("dropped a datagram: {error}");
                    continue;
                }
            };
            if !packet.is_reply() || packet.xid != xid || packet.mac() != Some(self.identity.mac) {
                continue;
            }
            let accepted = match (wanted, packet.message_type) {
                (Wanted::Offer, Some(MessageType::Offer)) => true,
                (Wanted::AckFrom(server), Some(MessageType::Ack | MessageType::Nak)) => {
                    packet.server_id.is_none_or(|id| id == *server)
                }
                _ => false,
            };
            if accepted {
                return Ok(Some(packet));
            }
        }
    }
}

#[cfg(test)]
pub(crate) mod tests_support {
    //! Server replies for tests, built as real DHCP packets.
    use std::net::Ipv4Addr;

    use crate::dhcp::packet::{DhcpPacket, MessageType, PacketBuilder, codes};

    /// A reply from `server` to `request`, as QEMU's user network sends it.
    pub fn reply(
        request: &DhcpPacket,
        kind: MessageType,
        server: Ipv4Addr,
        address: Ipv4Addr,
    ) -> Vec<u8> {
        let mut b = PacketBuilder::new(true, kind, request.xid, request.mac().unwrap())
            .yiaddr(address)
            .broadcast();
        b.address_option(codes::SERVER_ID, &[server]);
        if kind != MessageType::Nak {
            b.address_option(codes::SUBNET_MASK, &[Ipv4Addr::new(255, 255, 255, 0)]);
            b.address_option(codes::ROUTER, &[Ipv4Addr::new(10, 0, 2, 2)]);
            b.address_option(codes::DNS, &[Ipv4Addr::new(10, 0, 2, 3)]);
            b.option(codes::LEASE_TIME, &86_400u32.to_be_bytes());
        }
        b.finish()
    }
}

#[cfg(test)]
mod tests {
    use super::tests_support::reply;
    use super::*;
    use crate::dhcp::packet::PacketBuilder;
    use crate::fake::FakeSystem;
    use crate::sys::System;

    const MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];
    const SERVER: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 2);
    const OFFERED: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 15);

    fn client() -> DhcpClient {
        DhcpClient::new(
            ClientIdentity {
                mac: MAC,
                hostname: Some("cloister".into()),
            },
            RetryPolicy::default(),
            0x1234_5678,
        )
    }

    fn answer(kind: MessageType) -> crate::fake::ServerStep {
        Box::new(move |request| vec![reply(request, kind, SERVER, OFFERED)])
    }

    #[test]
    fn offer_then_ack_gives_a_lease() {
        let system = FakeSystem::new();
        system.advance_ms(5_000);
        system.push_server_step(answer(MessageType::Offer));
        system.push_server_step(answer(MessageType::Ack));
        let mut transport = system.open_dhcp_transport("eth0").unwrap();
        let lease = client().acquire(&mut transport, &system).unwrap();
        assert_eq!(lease.address, OFFERED);
        assert_eq!(lease.prefix_len, 24);
        assert_eq!(lease.routers, [SERVER]);
        assert_eq!(lease.dns_servers, [Ipv4Addr::new(10, 0, 2, 3)]);
        assert_eq!(lease.server_id, SERVER);
        assert_eq!(lease.lease_time_s, Some(86_400));
        assert_eq!(lease.renewal_time_s, 43_200);
        assert_eq!(lease.rebinding_time_s, 75_600);
        assert_eq!(lease.obtained_at_ms, 5_000);
        assert_eq!(lease.renew_at_ms(), Some(5_000 + 43_200_000));

        let sent = system.sent_packets();
        assert_eq!(sent.len(), 2);
        assert_eq!(sent[0].message_type, Some(MessageType::Discover));
        assert_eq!(sent[1].message_type, Some(MessageType::Request));
        assert_eq!(sent[1].requested_ip, Some(OFFERED));
        assert_eq!(sent[1].server_id, Some(SERVER));
        assert_eq!(sent[0].xid, sent[1].xid);
    }

    #[test]
    fn silence_retries_with_doubling_timeouts_then_gives_up() {
        let system = FakeSystem::new();
        let mut transport = system.open_dhcp_transport("eth0").unwrap();
        let error = client().acquire(&mut transport, &system).unwrap_err();
        assert!(matches!(
            error,
            DhcpError::NoLease {
                attempts: DHCP_ATTEMPTS
            }
        ));
        let sent = system.sent_packets();
        assert_eq!(sent.len(), DHCP_ATTEMPTS as usize);
        assert!(
            sent.iter()
                .all(|p| p.message_type == Some(MessageType::Discover))
        );
        // Each round uses a fresh transaction id.
        assert_ne!(sent[0].xid, sent[1].xid);
        // 1 + 2 + 4 + 8 + 8 seconds of waiting, capped.
        assert_eq!(system.boottime_ms(), 23_000);
        assert_eq!(sent[4].secs, 15);
    }

    #[test]
    fn nak_starts_over_with_a_new_discover() {
        let system = FakeSystem::new();
        system.push_server_step(answer(MessageType::Offer));
        system.push_server_step(answer(MessageType::Nak));
        system.push_server_step(answer(MessageType::Offer));
        system.push_server_step(answer(MessageType::Ack));
        let mut transport = system.open_dhcp_transport("eth0").unwrap();
        let lease = client().acquire(&mut transport, &system).unwrap();
        assert_eq!(lease.address, OFFERED);
        let kinds: Vec<_> = system
            .sent_packets()
            .iter()
            .map(|p| p.message_type)
            .collect();
        assert_eq!(
            kinds,
            [
                Some(MessageType::Discover),
                Some(MessageType::Request),
                Some(MessageType::Discover),
                Some(MessageType::Request)
            ]
        );
    }

    #[test]
    fn strangers_and_garbage_are_ignored() {
        let system = FakeSystem::new();
        system.push_server_step(Box::new(|request: &DhcpPacket| {
            let mut wrong_xid = request.clone();
            wrong_xid.xid ^= 1;
            let mut other_mac = request.clone();
            other_mac.chaddr[5] ^= 0xff;
            vec![
                b"not dhcp".to_vec(),
                vec![0u8; 4000],
                reply(
                    &wrong_xid,
                    MessageType::Offer,
                    SERVER,
                    Ipv4Addr::new(10, 0, 2, 99),
                ),
                reply(
                    &other_mac,
                    MessageType::Offer,
                    SERVER,
                    Ipv4Addr::new(10, 0, 2, 98),
                ),
                reply(
                    request,
                    MessageType::Ack,
                    SERVER,
                    Ipv4Addr::new(10, 0, 2, 97),
                ),
                reply(request, MessageType::Offer, SERVER, OFFERED),
            ]
        }));
        let other_server = Ipv4Addr::new(10, 0, 2, 200);
        system.push_server_step(Box::new(move |request: &DhcpPacket| {
            vec![
                reply(request, MessageType::Nak, other_server, OFFERED),
                reply(request, MessageType::Ack, SERVER, OFFERED),
            ]
        }));
        let mut transport = system.open_dhcp_transport("eth0").unwrap();
        let lease = client().acquire(&mut transport, &system).unwrap();
        assert_eq!(lease.address, OFFERED);
        assert_eq!(system.sent_packets().len(), 2);
    }

    #[test]
    fn offer_without_server_id_and_unusable_ack_are_retried() {
        let system = FakeSystem::new();
        system.push_server_step(Box::new(|request: &DhcpPacket| {
            vec![
                PacketBuilder::new(true, MessageType::Offer, request.xid, MAC)
                    .yiaddr(OFFERED)
                    .finish(),
            ]
        }));
        system.push_server_step(answer(MessageType::Offer));
        system.push_server_step(Box::new(|request: &DhcpPacket| {
            vec![reply(
                request,
                MessageType::Ack,
                SERVER,
                Ipv4Addr::BROADCAST,
            )]
        }));
        system.push_server_step(answer(MessageType::Offer));
        system.push_server_step(answer(MessageType::Ack));
        let mut transport = system.open_dhcp_transport("eth0").unwrap();
        let lease = client().acquire(&mut transport, &system).unwrap();
        assert_eq!(lease.address, OFFERED);
        assert_eq!(system.sent_packets().len(), 5);
    }

    #[test]
    fn lease_times_are_sane() {
        let mut ack = DhcpPacket::parse(&reply(
            &DhcpPacket::parse(
                &ClientIdentity {
                    mac: MAC,
                    hostname: None,
                }
                .discover(1, 0),
            )
            .unwrap(),
            MessageType::Ack,
            SERVER,
            OFFERED,
        ))
        .unwrap();
        ack.lease_time_s = Some(10);
        let lease = Lease::from_ack(&ack, SERVER, 0).unwrap();
        assert_eq!(lease.lease_time_s, Some(LEASE_MIN_S));
        assert!(lease.renewal_time_s < lease.rebinding_time_s);
        ack.lease_time_s = Some(1000);
        ack.renewal_time_s = Some(5000);
        ack.rebinding_time_s = Some(2000);
        let lease = Lease::from_ack(&ack, SERVER, 0).unwrap();
        assert_eq!((lease.renewal_time_s, lease.rebinding_time_s), (500, 875));
        ack.lease_time_s = None;
        let lease = Lease::from_ack(&ack, SERVER, 0).unwrap();
        assert_eq!(lease.renew_at_ms(), None);
        ack.subnet_mask = None;
        ack.yiaddr = Ipv4Addr::new(172, 16, 0, 5);
        assert_eq!(Lease::from_ack(&ack, SERVER, 0).unwrap().prefix_len, 16);
        ack.subnet_mask = Some(Ipv4Addr::new(255, 0, 255, 0));
        assert_eq!(
            Lease::from_ack(&ack, SERVER, 0),
            Err(LeaseError::BadSubnetMask(Ipv4Addr::new(255, 0, 255, 0)))
        );
        let record = Lease::from_ack(
            &DhcpPacket {
                subnet_mask: None,
                lease_time_s: Some(3600),
                ..ack
            },
            SERVER,
            7,
        )
        .unwrap()
        .to_record();
        assert!(record.contains("ADDRESS=172.16.0.5/16\n"));
        assert!(record.contains("LEASE_TIME_S=3600\n"));
        assert!(record.contains("OBTAINED_BOOTTIME_MS=7\n"));
    }

    #[test]
    fn renewal_extends_or_is_refused() {
        let system = FakeSystem::new();
        system.push_server_step(answer(MessageType::Offer));
        system.push_server_step(answer(MessageType::Ack));
        let mut transport = system.open_dhcp_transport("eth0").unwrap();
        let mut client = client();
        let lease = client.acquire(&mut transport, &system).unwrap();
        system.advance_ms(43_200_000);

        system.push_server_step(answer(MessageType::Ack));
        let RenewOutcome::Extended(extended) =
            client.renew(&mut transport, &system, &lease).unwrap()
        else {
            panic!("renewal was not extended");
        };
        assert_eq!(extended.obtained_at_ms, 43_200_000);
        let renewal = system.sent_packets().pop().unwrap();
        assert_eq!(renewal.ciaddr, OFFERED);
        assert_eq!(renewal.requested_ip, None);

        system.push_server_step(answer(MessageType::Nak));
        assert_eq!(
            client.renew(&mut transport, &system, &lease).unwrap(),
            RenewOutcome::Refused
        );
        assert_eq!(
            client.renew(&mut transport, &system, &lease).unwrap(),
            RenewOutcome::NoAnswer
        );
    }
}
