//! Decoding and presenting datapath events.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::Path,
};

use anyhow::Context as _;
use serde::Serialize;
use weft_common::{Event, EventKind, Hook, Reason, net::l4_proto_name};

use crate::DatapathMaps;

/// Takes the pending events of the datapath whose maps are pinned in `pin_dir` (they are
/// consumed), as views of node `node`. Interface names are those of the calling thread's network
/// namespace: call it from the node's.
pub fn drain_pinned(node: &str, pin_dir: &Path) -> anyhow::Result<Vec<EventView>> {
    let mut maps = DatapathMaps::from_pins(pin_dir)
        .with_context(|| format!("opening the maps pinned in {}", pin_dir.display()))?;
    Ok(maps
        .drain_events()
        .iter()
        .map(|e| EventView::new(node, e, interface_name(e.ifindex)))
        .collect())
}

/// The name of an interface of the calling thread's namespace.
pub fn interface_name(ifindex: u32) -> Option<String> {
    nix::net::if_::if_indextoname(ifindex)
        .ok()
        .map(|name| name.to_string_lossy().into_owned())
}

/// Reads an [`Event`] from ring buffer bytes; `None` when the record is too short.
pub fn decode_event(bytes: &[u8]) -> Option<Event> {
    if bytes.len() < size_of::<Event>() {
        return None;
    }
    // SAFETY: the length is checked above, Event is plain data valid for every bit pattern, and
    // read_unaligned makes no alignment assumption.
    Some(unsafe { bytes.as_ptr().cast::<Event>().read_unaligned() })
}

/// An event with its numbers turned into names, as `weft observe` shows it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct EventView {
    pub node: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub reason: String,
    pub hook: String,
    pub ifindex: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ifname: Option<String>,
    pub timestamp_ns: u64,
    pub length: u32,
    pub ethertype: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub destination: Option<String>,
    pub protocol: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub tcp_flags: String,
    /// The head of the packet, hex.
    pub packet: String,
}

impl EventView {
    pub fn new(node: &str, event: &Event, ifname: Option<String>) -> EventView {
        let addrs = addresses(event);
        let ports = matches!(event.l4_proto, 6 | 17);
        let endpoint = |addr: IpAddr, port: u16| {
            if ports {
                match addr {
                    IpAddr::V4(a) => format!("{a}:{port}"),
                    IpAddr::V6(a) => format!("[{a}]:{port}"),
                }
            } else {
                addr.to_string()
            }
        };
        let cap = usize::from(event.cap_len).min(event.snippet.len());
        EventView {
            node: node.to_string(),
            kind: EventKind::from_u8(event.kind)
                .map_or_else(|| format!("kind-{}", event.kind), |k| k.name().to_string()),
            reason: Reason::from_u8(event.reason).map_or_else(
                || format!("reason-{}", event.reason),
                |r| r.name().to_string(),
            ),
            hook: Hook::from_u8(event.hook)
                .map_or_else(|| format!("hook-{}", event.hook), |h| h.name().to_string()),
            ifindex: event.ifindex,
            ifname,
            timestamp_ns: event.timestamp_ns,
            length: event.pkt_len,
            ethertype: format!("{:#06x}", event.ethertype),
            source: addrs.map(|(s, _)| endpoint(s, event.src_port)),
            destination: addrs.map(|(_, d)| endpoint(d, event.dst_port)),
            protocol: protocol(event),
            tcp_flags: if event.l4_proto == 6 {
                tcp_flags(event.tcp_flags)
            } else {
                String::new()
            },
            packet: event.snippet[..cap]
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect(),
        }
    }

    /// One human-readable line.
    pub fn line(&self) -> String {
        let secs = self.timestamp_ns / 1_000_000_000;
        let micros = (self.timestamp_ns % 1_000_000_000) / 1_000;
        let iface = self
            .ifname
            .clone()
            .unwrap_or_else(|| format!("if{}", self.ifindex));
        let flow = match (&self.source, &self.destination) {
            (Some(s), Some(d)) => format!("{s} -> {d} {}", self.protocol),
            _ if self.protocol.is_empty() => format!("ethertype {}", self.ethertype),
            _ => format!("ethertype {} {}", self.ethertype, self.protocol),
        };
        let flags = if self.tcp_flags.is_empty() {
            String::new()
        } else {
            format!(" {}", self.tcp_flags)
        };
        let verdict = if self.kind == "drop" {
            format!("DROPPED ({})", self.reason)
        } else {
            "FORWARDED".to_string()
        };
        let head = if self.kind == "drop" {
            format!(" packet={}", self.packet)
        } else {
            String::new()
        };
        format!(
            "{secs}.{micros:06} {node} {hook} {iface}: {flow}{flags} len={len} {verdict}{head}",
            node = self.node,
            hook = self.hook,
            len = self.length,
        )
    }
}

fn addresses(event: &Event) -> Option<(IpAddr, IpAddr)> {
    match event.ip_version {
        4 => {
            let v4 = |a: &[u8; 16]| IpAddr::V4(Ipv4Addr::new(a[0], a[1], a[2], a[3]));
            Some((v4(&event.src_addr), v4(&event.dst_addr)))
        }
        6 => Some((
            IpAddr::V6(Ipv6Addr::from(event.src_addr)),
            IpAddr::V6(Ipv6Addr::from(event.dst_addr)),
        )),
        _ => None,
    }
}

fn protocol(event: &Event) -> String {
    match (event.ip_version, event.ethertype) {
        (4 | 6, _) => match event.l4_proto {
            1 | 58 => format!(
                "{} type={} code={}",
                l4_proto_name(event.l4_proto),
                event.src_port,
                event.dst_port
            ),
            p => match l4_proto_name(p) {
                "other" => format!("proto {p}"),
                name => name.to_string(),
            },
        },
        (_, 0x0806) => "ARP".to_string(),
        _ => String::new(),
    }
}

fn tcp_flags(flags: u8) -> String {
    const NAMES: [(u8, &str); 6] = [
        (0x02, "SYN"),
        (0x10, "ACK"),
        (0x01, "FIN"),
        (0x04, "RST"),
        (0x08, "PSH"),
        (0x20, "URG"),
    ];
    NAMES
        .iter()
        .filter(|(bit, _)| flags & bit != 0)
        .map(|(_, name)| *name)
        .collect::<Vec<_>>()
        .join("|")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event_bytes(event: &Event) -> Vec<u8> {
        // SAFETY: Event is repr(C) plain data without padding.
        unsafe {
            std::slice::from_raw_parts((event as *const Event).cast::<u8>(), size_of::<Event>())
        }
        .to_vec()
    }

    fn tcp_drop() -> Event {
        let mut e = Event::zeroed();
        e.kind = EventKind::Drop as u8;
        e.hook = Hook::FromContainer as u8;
        e.reason = Reason::MalformedTcp as u8;
        e.l4_proto = 6;
        e.ifindex = 7;
        e.timestamp_ns = 12_000_345_678;
        e.pkt_len = 54;
        e.ethertype = 0x0800;
        e.ip_version = 4;
        e.src_addr[..4].copy_from_slice(&[10, 42, 1, 10]);
        e.dst_addr[..4].copy_from_slice(&[10, 42, 1, 11]);
        e.src_port = 40000;
        e.dst_port = 80;
        e.tcp_flags = 0x12;
        e.cap_len = 2;
        e.snippet[..2].copy_from_slice(&[0xab, 0xcd]);
        e
    }

    #[test]
    fn decodes_what_the_kernel_side_writes_and_refuses_short_records() {
        let e = tcp_drop();
        assert_eq!(decode_event(&event_bytes(&e)), Some(e));
        assert_eq!(decode_event(&event_bytes(&e)[..100]), None);
    }

    #[test]
    fn a_drop_reads_as_a_line_with_its_reason() {
        let view = EventView::new("vps1", &tcp_drop(), Some("lxcpod1".into()));
        assert_eq!(
            view.line(),
            "12.000345 vps1 from-container lxcpod1: 10.42.1.10:40000 -> 10.42.1.11:80 TCP SYN|ACK \
             len=54 DROPPED (malformed TCP header) packet=abcd"
        );
    }

    #[test]
    fn json_names_every_field() {
        let view = EventView::new("vps1", &tcp_drop(), None);
        let json: serde_json::Value =
            serde_json::from_str(&serde_json::to_string(&view).expect("serializes")).expect("json");
        assert_eq!(json["type"], "drop");
        assert_eq!(json["reason"], "malformed TCP header");
        assert_eq!(json["hook"], "from-container");
        assert_eq!(json["source"], "10.42.1.10:40000");
        assert!(json.get("ifname").is_none());
    }

    #[test]
    fn unknown_numbers_stay_visible() {
        let mut e = tcp_drop();
        e.reason = 200;
        e.ip_version = 0;
        e.ethertype = 0x88cc;
        let view = EventView::new("n", &e, None);
        assert_eq!(view.reason, "reason-200");
        assert!(view.line().contains("ethertype 0x88cc"), "{}", view.line());
    }
}
