//! The `weft_node` array (one entry): who this node is, written by the agent before it attaches
//! anything.

/// Masquerade pod traffic that leaves the cluster (`bpf.masquerade`).
pub const NODE_MASQUERADE_FLAG: u32 = 1 << 0;
/// Socket LB translates only sockets of the node's own network namespace
/// (`socketLB.hostNamespaceOnly`), recognised by [`NodeConfig::netns_cookie`].
pub const NODE_SOCKET_LB_HOST_NS_ONLY_FLAG: u32 = 1 << 1;

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NodeConfig {
    /// The node's underlay IPv4, network order: outer source of tunnel packets, masquerade
    /// address.
    pub ipv4: [u8; 4],
    /// ifindex of the external device (tunnel packets leave through it).
    pub external_ifindex: u32,
    /// Geneve VNI of the cluster.
    pub vni: u32,
    pub snat_port_min: u16,
    pub snat_port_max: u16,
    pub flags: u32,
    pub _pad: u32,
    /// The cookie of the node's network namespace (SO_NETNS_COOKIE of the agent's sockets).
    pub netns_cookie: u64,
}

impl NodeConfig {
    pub const fn masquerade(&self) -> bool {
        self.flags & NODE_MASQUERADE_FLAG != 0
    }

    pub const fn socket_lb_host_namespace_only(&self) -> bool {
        self.flags & NODE_SOCKET_LB_HOST_NS_ONLY_FLAG != 0
    }

    /// Whether the agent has written the record (an all-zero one means "not configured").
    pub const fn is_configured(&self) -> bool {
        self.external_ifindex != 0
    }
}

const _: () = assert!(core::mem::size_of::<NodeConfig>() == 32);
