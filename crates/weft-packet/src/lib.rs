//! Packets for Weft's tests: [`PacketBuilder`] crafts Ethernet frames for datapath fixtures
//! (BPF_PROG_TEST_RUN) and lab traffic (raw sockets), [`GeneveBuilder`] the payload of a Geneve
//! datagram around one; [`decode`] turns frames back into fields so tests can assert on what
//! the datapath emitted.
//!
//! Everything is std-only and decoding never panics, whatever the input bytes.

pub mod builder;
pub mod checksum;
pub mod decode;
pub mod geneve;
mod summary;

pub use builder::{Corruption, PacketBuilder, TCP_ACK, TCP_FIN, TCP_PSH, TCP_RST, TCP_SYN};
pub use checksum::{internet_checksum, ipv4_pseudo_checksum, ipv6_pseudo_checksum};
pub use decode::{DecodeError, Decoded, L3, L4, Layer, decode};
pub use geneve::GeneveBuilder;

pub const ETHERTYPE_IPV4: u16 = 0x0800;
pub const ETHERTYPE_ARP: u16 = 0x0806;
pub const ETHERTYPE_IPV6: u16 = 0x86dd;

pub const IPPROTO_ICMP: u8 = 1;
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;
pub const IPPROTO_ICMPV6: u8 = 58;
/// RFC 3692 experimentation value, used as the IP protocol when no L4 header is built.
pub const IPPROTO_EXPERIMENTAL: u8 = 253;

pub const ARP_REQUEST: u16 = 1;
pub const ARP_REPLY: u16 = 2;

pub const ICMP_ECHO_REPLY: u8 = 0;
pub const ICMP_ECHO_REQUEST: u8 = 8;
pub const ICMPV6_ECHO_REQUEST: u8 = 128;
pub const ICMPV6_ECHO_REPLY: u8 = 129;

pub const ETH_HEADER_LEN: usize = 14;
pub const IPV4_HEADER_LEN: usize = 20;
pub const IPV6_HEADER_LEN: usize = 40;
pub const ARP_LEN: usize = 28;
pub const TCP_HEADER_LEN: usize = 20;
pub const UDP_HEADER_LEN: usize = 8;
/// ICMP and ICMPv6 echo: type, code, checksum, identifier, sequence number.
pub const ICMP_HEADER_LEN: usize = 8;
