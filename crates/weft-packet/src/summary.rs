//! One-line, tcpdump-like summaries of decoded frames for logs and assertion messages.

use std::net::{IpAddr, SocketAddr};

use crate::*;

impl Decoded {
    /// e.g. `10.42.1.11:40000 -> 10.42.1.12:8080 TCP SYN`,
    /// `10.42.1.11 -> 10.42.1.12 ICMP echo-request id=1 seq=2` or
    /// `ARP who-has 10.42.1.1 tell 10.42.1.11`; a failed checksum adds `[bad checksum]`.
    pub fn summary(&self) -> String {
        let line = match self.l3 {
            L3::Ipv4 {
                src, dst, proto, ..
            } => self.ip_summary(src.into(), dst.into(), proto),
            L3::Ipv6 {
                src,
                dst,
                next_header,
                ..
            } => self.ip_summary(src.into(), dst.into(), next_header),
            L3::Arp {
                op,
                sender_mac,
                sender_ip,
                target_ip,
                ..
            } => match op {
                ARP_REQUEST => format!("ARP who-has {target_ip} tell {sender_ip}"),
                ARP_REPLY => format!("ARP {sender_ip} is-at {}", weft_common::Mac(sender_mac)),
                op => format!("ARP op={op}"),
            },
            L3::Other => format!("ethertype {:#06x}", self.ethertype),
        };
        if self.checksums_ok() {
            line
        } else {
            format!("{line} [bad checksum]")
        }
    }

    /// Whether every checksum the frame carries verifies.
    pub fn checksums_ok(&self) -> bool {
        let l3_ok = !matches!(
            self.l3,
            L3::Ipv4 {
                checksum_ok: false,
                ..
            }
        );
        let l4_ok = match self.l4 {
            L4::Tcp { checksum_ok, .. }
            | L4::Udp { checksum_ok, .. }
            | L4::Icmp { checksum_ok, .. }
            | L4::Icmpv6 { checksum_ok, .. } => checksum_ok,
            L4::None => true,
        };
        l3_ok && l4_ok
    }

    fn ip_summary(&self, src: IpAddr, dst: IpAddr, proto: u8) -> String {
        let hosts = format!("{src} -> {dst}");
        let sockets = |sport, dport| {
            format!(
                "{} -> {}",
                SocketAddr::new(src, sport),
                SocketAddr::new(dst, dport)
            )
        };
        match self.l4 {
            L4::Tcp {
                sport,
                dport,
                flags,
                ..
            } => {
                format!("{} TCP {}", sockets(sport, dport), tcp_flag_names(flags))
            }
            L4::Udp { sport, dport, .. } => format!("{} UDP", sockets(sport, dport)),
            L4::Icmp {
                ty, code, id, seq, ..
            } => match ty {
                ICMP_ECHO_REQUEST => format!("{hosts} ICMP echo-request id={id} seq={seq}"),
                ICMP_ECHO_REPLY => format!("{hosts} ICMP echo-reply id={id} seq={seq}"),
                _ => format!("{hosts} ICMP type={ty} code={code}"),
            },
            L4::Icmpv6 { ty, code, .. } => match ty {
                ICMPV6_ECHO_REQUEST => format!("{hosts} ICMPv6 echo-request"),
                ICMPV6_ECHO_REPLY => format!("{hosts} ICMPv6 echo-reply"),
                _ => format!("{hosts} ICMPv6 type={ty} code={code}"),
            },
            L4::None => format!("{hosts} proto={proto}"),
        }
    }
}

const TCP_FLAG_NAMES: [(u8, &str); 5] = [
    (TCP_SYN, "SYN"),
    (TCP_ACK, "ACK"),
    (TCP_FIN, "FIN"),
    (TCP_RST, "RST"),
    (TCP_PSH, "PSH"),
];

/// Set flags by name, e.g. `SYN|ACK`, or `none`.
fn tcp_flag_names(flags: u8) -> String {
    let set: Vec<&str> = TCP_FLAG_NAMES
        .iter()
        .filter(|(bit, _)| flags & bit != 0)
        .map(|(_, name)| *name)
        .collect();
    if set.is_empty() {
        "none".to_owned()
    } else {
        set.join("|")
    }
}
