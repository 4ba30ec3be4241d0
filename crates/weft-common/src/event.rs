//! Records written to the `weft_events` ring buffer.

/// Kind of an [`Event`].
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    Drop = 1,
    Trace = 2,
}

impl EventKind {
    pub const fn from_u8(v: u8) -> Option<EventKind> {
        match v {
            1 => Some(EventKind::Drop),
            2 => Some(EventKind::Trace),
            _ => None,
        }
    }

    pub const fn name(self) -> &'static str {
        match self {
            EventKind::Drop => "drop",
            EventKind::Trace => "trace",
        }
    }
}

/// Bytes of the packet's head copied into an event.
pub const SNIPPET_LEN: usize = 64;

/// One datapath event. Multi-byte integers are in host byte order; addresses are in network
/// order (IPv4 in the first four bytes of the 16). For ICMP, `src_port` holds the type and
/// `dst_port` the code.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Event {
    pub kind: u8,
    pub hook: u8,
    pub reason: u8,
    pub l4_proto: u8,
    pub ifindex: u32,
    pub timestamp_ns: u64,
    pub pkt_len: u32,
    pub ethertype: u16,
    pub src_port: u16,
    pub dst_port: u16,
    pub tcp_flags: u8,
    /// 0 when the packet carried no parsable IP header, else 4 or 6.
    pub ip_version: u8,
    /// Bytes of `snippet` that hold packet data.
    pub cap_len: u16,
    pub _pad: [u8; 2],
    pub src_addr: [u8; 16],
    pub dst_addr: [u8; 16],
    pub snippet: [u8; SNIPPET_LEN],
    /// Security identity of the source when the datapath knows it (from the tunnel option or
    /// the local endpoint), else 0.
    pub src_identity: u32,
    pub _pad2: u32,
}

impl Event {
    pub const fn zeroed() -> Event {
        Event {
            kind: 0,
            hook: 0,
            reason: 0,
            l4_proto: 0,
            ifindex: 0,
            timestamp_ns: 0,
            pkt_len: 0,
            ethertype: 0,
            src_port: 0,
            dst_port: 0,
            tcp_flags: 0,
            ip_version: 0,
            cap_len: 0,
            _pad: [0; 2],
            src_addr: [0; 16],
            dst_addr: [0; 16],
            snippet: [0; SNIPPET_LEN],
            src_identity: 0,
            _pad2: 0,
        }
    }
}

const _: () = assert!(core::mem::size_of::<Event>() == 136);
const _: () = assert!(core::mem::offset_of!(Event, src_addr) == 32);
const _: () = assert!(core::mem::offset_of!(Event, snippet) == 64);
