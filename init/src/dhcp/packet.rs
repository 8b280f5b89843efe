//! DHCPv4 messages (RFC 2131, options from RFC 2132 and RFC 3442): building the client's
//! DISCOVER and REQUEST, and parsing what servers send back.
//!
//! The parser reads bytes from the network, so it has hard limits: the datagram's size,
//! the number of addresses and routes kept, and every length is checked before use. It never
//! panics and never allocates more than the datagram's size. It does nothing with a packet
//! but describe it: whether to trust it is the client's decision.

use std::net::Ipv4Addr;

/// The largest DHCP datagram accepted (an Ethernet MTU's worth).
pub const DHCP_PACKET_MAX_BYTES: usize = 1500;
/// The fixed BOOTP header plus the magic cookie.
pub const DHCP_HEADER_BYTES: usize = 240;
/// The most routers kept from option 3.
pub const ROUTERS_MAX: usize = 4;
/// The most DNS servers kept from option 6.
pub const DNS_SERVERS_MAX: usize = 3;
/// The most routes kept from option 121.
pub const CLASSLESS_ROUTES_MAX: usize = 16;
/// The longest domain name or host name kept.
pub const NAME_MAX_BYTES: usize = 255;

const MAGIC_COOKIE: [u8; 4] = [99, 130, 83, 99];
const BOOTREQUEST: u8 = 1;
const BOOTREPLY: u8 = 2;
const HTYPE_ETHERNET: u8 = 1;
const FLAG_BROADCAST: u16 = 0x8000;

/// DHCP option codes (RFC 2132, RFC 3442).
pub mod codes {
    pub const PAD: u8 = 0;
    pub const SUBNET_MASK: u8 = 1;
    pub const ROUTER: u8 = 3;
    pub const DNS: u8 = 6;
    pub const HOSTNAME: u8 = 12;
    pub const DOMAIN_NAME: u8 = 15;
    pub const MTU: u8 = 26;
    pub const REQUESTED_IP: u8 = 50;
    pub const LEASE_TIME: u8 = 51;
    pub const MESSAGE_TYPE: u8 = 53;
    pub const SERVER_ID: u8 = 54;
    pub const PARAMETER_LIST: u8 = 55;
    pub const MAX_MESSAGE_SIZE: u8 = 57;
    pub const RENEWAL_TIME: u8 = 58;
    pub const REBINDING_TIME: u8 = 59;
    pub const CLIENT_ID: u8 = 61;
    pub const CLASSLESS_ROUTES: u8 = 121;
    pub const END: u8 = 255;
}

/// The options the client asks for.
const REQUESTED_OPTIONS: [u8; 10] = [
    codes::SUBNET_MASK,
    codes::ROUTER,
    codes::DNS,
    codes::DOMAIN_NAME,
    codes::MTU,
    codes::LEASE_TIME,
    codes::SERVER_ID,
    codes::RENEWAL_TIME,
    codes::REBINDING_TIME,
    codes::CLASSLESS_ROUTES,
];

/// DHCP message types (option 53).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MessageType {
    Discover,
    Offer,
    Request,
    Decline,
    Ack,
    Nak,
    Release,
    Inform,
}

impl MessageType {
    fn code(self) -> u8 {
        match self {
            Self::Discover => 1,
            Self::Offer => 2,
            Self::Request => 3,
            Self::Decline => 4,
            Self::Ack => 5,
            Self::Nak => 6,
            Self::Release => 7,
            Self::Inform => 8,
        }
    }

    fn from_code(code: u8) -> Option<Self> {
        Some(match code {
            1 => Self::Discover,
            2 => Self::Offer,
            3 => Self::Request,
            4 => Self::Decline,
            5 => Self::Ack,
            6 => Self::Nak,
            7 => Self::Release,
            8 => Self::Inform,
            _ => return None,
        })
    }
}

/// One route from option 121.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClasslessRoute {
    /// The destination network.
    pub destination: Ipv4Addr,
    /// Its prefix length.
    pub prefix_len: u8,
    /// The router; `0.0.0.0` means on-link.
    pub router: Ipv4Addr,
}

/// Why a datagram is not a usable DHCP message.
#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
pub enum PacketError {
    #[error("datagram of {0} bytes is shorter than a DHCP header")]
    TooShort(usize),
    #[error("datagram of {0} bytes is longer than {DHCP_PACKET_MAX_BYTES}")]
    TooLong(usize),
    #[error("no DHCP magic cookie")]
    BadMagicCookie,
    #[error("hardware address length {0} is over 16")]
    BadHardwareLength(u8),
    #[error("option {0} runs past the end of the datagram")]
    TruncatedOption(u8),
    #[error("option {code} has a bad length {len}")]
    BadOptionLength { code: u8, len: usize },
    #[error("option 53 has an unknown message type {0}")]
    UnknownMessageType(u8),
    #[error("option 121 is malformed")]
    BadClasslessRoute,
}

/// A parsed DHCP message: the header fields and the options init understands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DhcpPacket {
    /// 1 for a request, 2 for a reply.
    pub op: u8,
    /// Transaction id.
    pub xid: u32,
    /// Seconds since the client began.
    pub secs: u16,
    /// Whether the broadcast flag is set.
    pub broadcast: bool,
    /// The client's current address (renewals).
    pub ciaddr: Ipv4Addr,
    /// "Your" address: the one offered or assigned.
    pub yiaddr: Ipv4Addr,
    /// The client's hardware address (only the first `hlen` bytes count).
    pub chaddr: [u8; 16],
    /// Length of the hardware address.
    pub hlen: u8,
    /// Option 53.
    pub message_type: Option<MessageType>,
    /// Option 54.
    pub server_id: Option<Ipv4Addr>,
    /// Option 50.
    pub requested_ip: Option<Ipv4Addr>,
    /// Option 1.
    pub subnet_mask: Option<Ipv4Addr>,
    /// Option 3, at most [`ROUTERS_MAX`].
    pub routers: Vec<Ipv4Addr>,
    /// Option 6, at most [`DNS_SERVERS_MAX`].
    pub dns_servers: Vec<Ipv4Addr>,
    /// Option 15.
    pub domain_name: Option<String>,
    /// Option 12.
    pub hostname: Option<String>,
    /// Option 26.
    pub mtu: Option<u16>,
    /// Option 51, in seconds; `u32::MAX` is infinite.
    pub lease_time_s: Option<u32>,
    /// Option 58.
    pub renewal_time_s: Option<u32>,
    /// Option 59.
    pub rebinding_time_s: Option<u32>,
    /// Option 121, at most [`CLASSLESS_ROUTES_MAX`].
    pub classless_routes: Vec<ClasslessRoute>,
    /// Option 55 (in requests).
    pub parameter_list: Vec<u8>,
}

impl Default for DhcpPacket {
    fn default() -> Self {
        Self {
            op: 0,
            xid: 0,
            secs: 0,
            broadcast: false,
            ciaddr: Ipv4Addr::UNSPECIFIED,
            yiaddr: Ipv4Addr::UNSPECIFIED,
            chaddr: [0; 16],
            hlen: 0,
            message_type: None,
            server_id: None,
            requested_ip: None,
            subnet_mask: None,
            routers: Vec::new(),
            dns_servers: Vec::new(),
            domain_name: None,
            hostname: None,
            mtu: None,
            lease_time_s: None,
            renewal_time_s: None,
            rebinding_time_s: None,
            classless_routes: Vec::new(),
            parameter_list: Vec::new(),
        }
    }
}

fn ipv4_at(bytes: &[u8], offset: usize) -> Ipv4Addr {
    let mut octets = [0u8; 4];
    if let Some(src) = bytes.get(offset..offset + 4) {
        octets.copy_from_slice(src);
    }
    Ipv4Addr::from(octets)
}

fn exact<const N: usize>(code: u8, value: &[u8]) -> Result<[u8; N], PacketError> {
    value.try_into().map_err(|_| PacketError::BadOptionLength {
        code,
        len: value.len(),
    })
}

fn address_list(code: u8, value: &[u8], max: usize) -> Result<Vec<Ipv4Addr>, PacketError> {
    if value.is_empty() || !value.len().is_multiple_of(4) {
        return Err(PacketError::BadOptionLength {
            code,
            len: value.len(),
        });
    }
    Ok(value
        .chunks_exact(4)
        .take(max)
        .map(|c| Ipv4Addr::new(c[0], c[1], c[2], c[3]))
        .collect())
}

fn name(value: &[u8]) -> String {
    let trimmed = value.split(|b| *b == 0).next().unwrap_or_default();
    let kept = &trimmed[..trimmed.len().min(NAME_MAX_BYTES)];
    String::from_utf8_lossy(kept).into_owned()
}

/// Parses option 121 (RFC 3442): a sequence of (prefix length, significant octets of the
/// destination, router).
pub fn parse_classless_routes(value: &[u8]) -> Result<Vec<ClasslessRoute>, PacketError> {
    let mut routes = Vec::new();
    let mut rest = value;
    while let Some((&prefix_len, tail)) = rest.split_first() {
        if prefix_len > 32 {
            return Err(PacketError::BadClasslessRoute);
        }
        let significant = usize::from(prefix_len).div_ceil(8);
        if tail.len() < significant + 4 {
            return Err(PacketError::BadClasslessRoute);
        }
        let mut destination = [0u8; 4];
        destination[..significant].copy_from_slice(&tail[..significant]);
        let router = ipv4_at(tail, significant);
        rest = &tail[significant + 4..];
        if routes.len() < CLASSLESS_ROUTES_MAX {
            let destination = u32::from_be_bytes(destination) & prefix_mask(prefix_len);
            routes.push(ClasslessRoute {
                destination: destination.into(),
                prefix_len,
                router,
            });
        }
    }
    Ok(routes)
}

/// The netmask of a prefix length, as a host-order integer. Lengths over 32 mean 32.
pub fn prefix_mask(prefix_len: u8) -> u32 {
    match prefix_len {
        0 => 0,
        n => u32::MAX << (32 - u32::from(n.min(32))),
    }
}

/// The prefix length of a netmask, or `None` when its ones are not contiguous.
pub fn mask_prefix_len(mask: Ipv4Addr) -> Option<u8> {
    let bits = u32::from(mask);
    let ones = bits.leading_ones();
    (bits.checked_shl(ones).unwrap_or(0) == 0).then(|| u8::try_from(ones).unwrap_or(32))
}

impl DhcpPacket {
    /// Parses a datagram. Unknown options are skipped; options that appear more than once
    /// are concatenated first, as RFC 3396 says.
    pub fn parse(bytes: &[u8]) -> Result<Self, PacketError> {
        if bytes.len() > DHCP_PACKET_MAX_BYTES {
            return Err(PacketError::TooLong(bytes.len()));
        }
        if bytes.len() < DHCP_HEADER_BYTES {
            return Err(PacketError::TooShort(bytes.len()));
        }
        if bytes[236..240] != MAGIC_COOKIE {
            return Err(PacketError::BadMagicCookie);
        }
        let hlen = bytes[2];
        if hlen > 16 {
            return Err(PacketError::BadHardwareLength(hlen));
        }
        let mut chaddr = [0u8; 16];
        chaddr.copy_from_slice(&bytes[28..44]);
        let mut packet = DhcpPacket {
            op: bytes[0],
            hlen,
            xid: u32::from_be_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]),
            secs: u16::from_be_bytes([bytes[8], bytes[9]]),
            broadcast: u16::from_be_bytes([bytes[10], bytes[11]]) & FLAG_BROADCAST != 0,
            ciaddr: ipv4_at(bytes, 12),
            yiaddr: ipv4_at(bytes, 16),
            chaddr,
            ..Default::default()
        };
        // Collect each option's value (concatenated when split), bounded by the datagram.
        let mut values: Vec<(u8, Vec<u8>)> = Vec::new();
        let mut i = DHCP_HEADER_BYTES;
        while i < bytes.len() {
            let code = bytes[i];
            match code {
                codes::PAD => i += 1,
                codes::END => break,
                _ => {
                    let len =
                        usize::from(*bytes.get(i + 1).ok_or(PacketError::TruncatedOption(code))?);
                    let value = bytes
                        .get(i + 2..i + 2 + len)
                        .ok_or(PacketError::TruncatedOption(code))?;
                    match values.iter_mut().find(|(c, _)| *c == code) {
                        Some((_, existing)) => existing.extend_from_slice(value),
                        None => values.push((code, value.to_vec())),
                    }
                    i += 2 + len;
                }
            }
        }
        for (code, value) in &values {
            packet.apply_option(*code, value)?;
        }
        Ok(packet)
    }

    fn apply_option(&mut self, code: u8, value: &[u8]) -> Result<(), PacketError> {
        match code {
            codes::MESSAGE_TYPE => {
                let [t] = exact::<1>(code, value)?;
                self.message_type =
                    Some(MessageType::from_code(t).ok_or(PacketError::UnknownMessageType(t))?);
            }
            codes::SERVER_ID => self.server_id = Some(exact::<4>(code, value)?.into()),
            codes::REQUESTED_IP => self.requested_ip = Some(exact::<4>(code, value)?.into()),
            codes::SUBNET_MASK => self.subnet_mask = Some(exact::<4>(code, value)?.into()),
            codes::ROUTER => self.routers = address_list(code, value, ROUTERS_MAX)?,
            codes::DNS => self.dns_servers = address_list(code, value, DNS_SERVERS_MAX)?,
            codes::DOMAIN_NAME => self.domain_name = Some(name(value)),
            codes::HOSTNAME => self.hostname = Some(name(value)),
            codes::MTU => self.mtu = Some(u16::from_be_bytes(exact::<2>(code, value)?)),
            codes::LEASE_TIME => self.lease_time_s = Some(u32::from_be_bytes(exact(code, value)?)),
            codes::RENEWAL_TIME => {
                self.renewal_time_s = Some(u32::from_be_bytes(exact(code, value)?))
            }
            codes::REBINDING_TIME => {
                self.rebinding_time_s = Some(u32::from_be_bytes(exact(code, value)?));
            }
            codes::CLASSLESS_ROUTES => self.classless_routes = parse_classless_routes(value)?,
            codes::PARAMETER_LIST => self.parameter_list = value.to_vec(),
            _ => {}
        }
        Ok(())
    }

    /// The client hardware address as six bytes, if it is an Ethernet one.
    pub fn mac(&self) -> Option<[u8; 6]> {
        (self.hlen == 6).then(|| {
            let mut mac = [0u8; 6];
            mac.copy_from_slice(&self.chaddr[..6]);
            mac
        })
    }

    /// Whether this is a server's reply.
    pub fn is_reply(&self) -> bool {
        self.op == BOOTREPLY
    }
}

/// Writes options and the header of a message; used for the client's messages and, in
/// tests and fuzzing, for building server replies.
#[derive(Debug)]
pub struct PacketBuilder {
    bytes: Vec<u8>,
}

impl PacketBuilder {
    /// Starts a message with the BOOTP header filled in.
    pub fn new(reply: bool, message_type: MessageType, xid: u32, mac: [u8; 6]) -> Self {
        let mut bytes = vec![0u8; DHCP_HEADER_BYTES];
        bytes[0] = if reply { BOOTREPLY } else { BOOTREQUEST };
        bytes[1] = HTYPE_ETHERNET;
        bytes[2] = 6;
        bytes[4..8].copy_from_slice(&xid.to_be_bytes());
        bytes[28..34].copy_from_slice(&mac);
        bytes[236..240].copy_from_slice(&MAGIC_COOKIE);
        let mut builder = Self { bytes };
        builder.option(codes::MESSAGE_TYPE, &[message_type.code()]);
        builder
    }

    /// Sets the broadcast flag (replies must be broadcast: the client has no address yet).
    pub fn broadcast(mut self) -> Self {
        self.bytes[10..12].copy_from_slice(&FLAG_BROADCAST.to_be_bytes());
        self
    }

    /// Sets `secs`.
    pub fn secs(mut self, secs: u16) -> Self {
        self.bytes[8..10].copy_from_slice(&secs.to_be_bytes());
        self
    }

    /// Sets `ciaddr`.
    pub fn ciaddr(mut self, address: Ipv4Addr) -> Self {
        self.bytes[12..16].copy_from_slice(&address.octets());
        self
    }

    /// Sets `yiaddr`.
    pub fn yiaddr(mut self, address: Ipv4Addr) -> Self {
        self.bytes[16..20].copy_from_slice(&address.octets());
        self
    }

    /// Appends one option; values over 255 bytes are split as RFC 3396 allows.
    pub fn option(&mut self, code: u8, value: &[u8]) -> &mut Self {
        if value.is_empty() {
            self.bytes.extend_from_slice(&[code, 0]);
        }
        for chunk in value.chunks(255) {
            self.bytes.push(code);
            self.bytes
                .push(u8::try_from(chunk.len()).unwrap_or(u8::MAX));
            self.bytes.extend_from_slice(chunk);
        }
        self
    }

    /// Appends an address option.
    pub fn address_option(&mut self, code: u8, addresses: &[Ipv4Addr]) -> &mut Self {
        let value: Vec<u8> = addresses.iter().flat_map(|a| a.octets()).collect();
        self.option(code, &value)
    }

    /// Ends the option list and returns the datagram.
    pub fn finish(mut self) -> Vec<u8> {
        self.bytes.push(codes::END);
        self.bytes
    }
}

/// The client's identity on the wire.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientIdentity {
    /// The interface's MAC address.
    pub mac: [u8; 6],
    /// The hostname sent in option 12.
    pub hostname: Option<String>,
}

impl ClientIdentity {
    fn common(&self, builder: &mut PacketBuilder) {
        let mut client_id = vec![HTYPE_ETHERNET];
        client_id.extend_from_slice(&self.mac);
        builder.option(codes::CLIENT_ID, &client_id);
        builder.option(codes::PARAMETER_LIST, &REQUESTED_OPTIONS);
        let max_size = u16::try_from(DHCP_PACKET_MAX_BYTES).unwrap_or(u16::MAX);
        builder.option(codes::MAX_MESSAGE_SIZE, &max_size.to_be_bytes());
        if let Some(hostname) = &self.hostname {
            builder.option(codes::HOSTNAME, hostname.as_bytes());
        }
    }

    /// DHCPDISCOVER, asking for a broadcast reply.
    pub fn discover(&self, xid: u32, secs: u16) -> Vec<u8> {
        let mut builder = PacketBuilder::new(false, MessageType::Discover, xid, self.mac)
            .broadcast()
            .secs(secs);
        self.common(&mut builder);
        builder.finish()
    }

    /// DHCPREQUEST in SELECTING state: accepts `offered` from `server`.
    pub fn request_offer(
        &self,
        xid: u32,
        secs: u16,
        offered: Ipv4Addr,
        server: Ipv4Addr,
    ) -> Vec<u8> {
        let mut builder = PacketBuilder::new(false, MessageType::Request, xid, self.mac)
            .broadcast()
            .secs(secs);
        builder.address_option(codes::REQUESTED_IP, &[offered]);
        builder.address_option(codes::SERVER_ID, &[server]);
        self.common(&mut builder);
        builder.finish()
    }

    /// DHCPREQUEST in RENEWING/REBINDING state: extends the lease on `current`.
    pub fn request_renewal(&self, xid: u32, current: Ipv4Addr) -> Vec<u8> {
        let mut builder =
            PacketBuilder::new(false, MessageType::Request, xid, self.mac).ciaddr(current);
        self.common(&mut builder);
        builder.finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];

    fn identity() -> ClientIdentity {
        ClientIdentity {
            mac: MAC,
            hostname: Some("cloister".into()),
        }
    }

    #[test]
    fn discover_round_trips() {
        let bytes = identity().discover(0xdead_beef, 3);
        let packet = DhcpPacket::parse(&bytes).unwrap();
        assert_eq!(packet.op, BOOTREQUEST);
        assert_eq!(packet.xid, 0xdead_beef);
        assert_eq!(packet.secs, 3);
        assert!(packet.broadcast);
        assert_eq!(packet.message_type, Some(MessageType::Discover));
        assert_eq!(packet.mac(), Some(MAC));
        assert_eq!(packet.hostname.as_deref(), Some("cloister"));
        assert_eq!(packet.parameter_list, REQUESTED_OPTIONS);
        assert_eq!(packet.requested_ip, None);
    }

    #[test]
    fn request_names_offer_and_server() {
        let offered = Ipv4Addr::new(10, 0, 2, 15);
        let server = Ipv4Addr::new(10, 0, 2, 2);
        let packet = DhcpPacket::parse(&identity().request_offer(7, 0, offered, server)).unwrap();
        assert_eq!(packet.message_type, Some(MessageType::Request));
        assert_eq!(packet.requested_ip, Some(offered));
        assert_eq!(packet.server_id, Some(server));
        assert_eq!(packet.ciaddr, Ipv4Addr::UNSPECIFIED);

        let renewal = DhcpPacket::parse(&identity().request_renewal(8, offered)).unwrap();
        assert_eq!(renewal.ciaddr, offered);
        assert_eq!(renewal.requested_ip, None);
        assert_eq!(renewal.server_id, None);
        assert!(!renewal.broadcast);
    }

    #[test]
    fn ack_options_are_parsed() {
        let mut b =
            PacketBuilder::new(true, MessageType::Ack, 42, MAC).yiaddr(Ipv4Addr::new(10, 0, 2, 15));
        b.address_option(codes::SUBNET_MASK, &[Ipv4Addr::new(255, 255, 255, 0)]);
        b.address_option(codes::ROUTER, &[Ipv4Addr::new(10, 0, 2, 2)]);
        b.address_option(
            codes::DNS,
            &[Ipv4Addr::new(10, 0, 2, 3), Ipv4Addr::new(1, 1, 1, 1)],
        );
        b.address_option(codes::SERVER_ID, &[Ipv4Addr::new(10, 0, 2, 2)]);
        b.option(codes::LEASE_TIME, &86400u32.to_be_bytes());
        b.option(codes::MTU, &1460u16.to_be_bytes());
        b.option(codes::DOMAIN_NAME, b"example.internal\0");
        let packet = DhcpPacket::parse(&b.finish()).unwrap();
        assert!(packet.is_reply());
        assert_eq!(packet.message_type, Some(MessageType::Ack));
        assert_eq!(packet.yiaddr, Ipv4Addr::new(10, 0, 2, 15));
        assert_eq!(packet.subnet_mask, Some(Ipv4Addr::new(255, 255, 255, 0)));
        assert_eq!(packet.routers, [Ipv4Addr::new(10, 0, 2, 2)]);
        assert_eq!(packet.dns_servers.len(), 2);
        assert_eq!(packet.lease_time_s, Some(86400));
        assert_eq!(packet.mtu, Some(1460));
        assert_eq!(packet.domain_name.as_deref(), Some("example.internal"));
    }

    #[test]
    fn split_options_are_concatenated_and_lists_are_capped() {
        let mut b = PacketBuilder::new(true, MessageType::Offer, 1, MAC);
        let many: Vec<Ipv4Addr> = (1..=10).map(|i| Ipv4Addr::new(10, 0, 0, i)).collect();
        b.address_option(codes::DNS, &many[..2]);
        b.address_option(codes::DNS, &many[2..]);
        b.address_option(codes::ROUTER, &many);
        let packet = DhcpPacket::parse(&b.finish()).unwrap();
        assert_eq!(packet.dns_servers, many[..DNS_SERVERS_MAX]);
        assert_eq!(packet.routers, many[..ROUTERS_MAX]);
    }

    #[test]
    fn classless_routes_follow_rfc3442() {
        // 0/0 via 10.0.0.1; 10.128.0.1/32 on-link; 192.168/16 via 10.0.0.254
        let value = [
            0, 10, 0, 0, 1, //
            32, 10, 128, 0, 1, 0, 0, 0, 0, //
            16, 192, 168, 10, 0, 0, 254,
        ];
        let routes = parse_classless_routes(&value).unwrap();
        assert_eq!(
            routes,
            [
                ClasslessRoute {
                    destination: Ipv4Addr::UNSPECIFIED,
                    prefix_len: 0,
                    router: Ipv4Addr::new(10, 0, 0, 1)
                },
                ClasslessRoute {
                    destination: Ipv4Addr::new(10, 128, 0, 1),
                    prefix_len: 32,
                    router: Ipv4Addr::UNSPECIFIED
                },
                ClasslessRoute {
                    destination: Ipv4Addr::new(192, 168, 0, 0),
                    prefix_len: 16,
                    router: Ipv4Addr::new(10, 0, 0, 254)
                },
            ]
        );
        assert_eq!(
            parse_classless_routes(&[33, 0, 0, 0, 0]),
            Err(PacketError::BadClasslessRoute)
        );
        assert_eq!(
            parse_classless_routes(&[24, 10, 0]),
            Err(PacketError::BadClasslessRoute)
        );
    }

    #[test]
    fn malformed_datagrams_are_refused() {
        let good = identity().discover(1, 0);
        assert_eq!(
            DhcpPacket::parse(&good[..239]),
            Err(PacketError::TooShort(239))
        );
        let mut bad_cookie = good.clone();
        bad_cookie[236] = 0;
        assert_eq!(
            DhcpPacket::parse(&bad_cookie),
            Err(PacketError::BadMagicCookie)
        );
        let mut hlen = good.clone();
        hlen[2] = 17;
        assert_eq!(
            DhcpPacket::parse(&hlen),
            Err(PacketError::BadHardwareLength(17))
        );
        let mut truncated = good[..DHCP_HEADER_BYTES].to_vec();
        truncated.extend_from_slice(&[codes::DNS, 8, 1, 2, 3, 4]);
        assert_eq!(
            DhcpPacket::parse(&truncated),
            Err(PacketError::TruncatedOption(codes::DNS))
        );
        let mut odd = good[..DHCP_HEADER_BYTES].to_vec();
        odd.extend_from_slice(&[codes::ROUTER, 3, 1, 2, 3, codes::END]);
        assert_eq!(
            DhcpPacket::parse(&odd),
            Err(PacketError::BadOptionLength {
                code: codes::ROUTER,
                len: 3
            })
        );
        let mut big = good;
        big.resize(DHCP_PACKET_MAX_BYTES + 1, 0);
        assert_eq!(DhcpPacket::parse(&big), Err(PacketError::TooLong(1501)));
        let mut kind = PacketBuilder::new(true, MessageType::Ack, 1, MAC).finish();
        kind[242] = 99;
        assert_eq!(
            DhcpPacket::parse(&kind),
            Err(PacketError::UnknownMessageType(99))
        );
    }

    #[test]
    fn masks_and_prefixes() {
        assert_eq!(mask_prefix_len(Ipv4Addr::new(255, 255, 255, 0)), Some(24));
        assert_eq!(mask_prefix_len(Ipv4Addr::new(255, 255, 255, 255)), Some(32));
        assert_eq!(mask_prefix_len(Ipv4Addr::new(0, 0, 0, 0)), Some(0));
        assert_eq!(mask_prefix_len(Ipv4Addr::new(255, 0, 255, 0)), None);
        assert_eq!(prefix_mask(24), 0xffff_ff00);
        assert_eq!(prefix_mask(0), 0);
        assert_eq!(prefix_mask(32), u32::MAX);
    }
}
