//! A small DHCPv4 client: the wire format in [`packet`] and the exchange in [`client`].
//!
//! It only ever obtains and renews one IPv4 lease for one interface; it never touches the
//! interface's configuration itself.

pub mod client;
pub mod packet;
