//! The `weft_endpoints` hash: the pods of this node, keyed by their IPv4 address. The datapath
//! delivers to them with `bpf_redirect_peer` and checks what they send against them.

/// Key: the pod's IPv4 address in network order.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EndpointKey {
    pub addr: [u8; 4],
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EndpointInfo {
    /// ifindex of the host-side veth (in the node's namespace).
    pub ifindex: u32,
    /// Security identity of the pod.
    pub identity: u32,
    /// MAC of the pod's own interface: the only source MAC it may send from.
    pub mac: [u8; 6],
    /// MAC of the host-side veth: the source MAC of what the datapath delivers to the pod.
    pub host_mac: [u8; 6],
    pub _pad: u32,
}

pub const ENDPOINTS_MAX: u32 = 4096;

const _: () = assert!(core::mem::size_of::<EndpointKey>() == 4);
const _: () = assert!(core::mem::size_of::<EndpointInfo>() == 24);
const _: () = assert!(core::mem::offset_of!(EndpointInfo, host_mac) == 14);
