//! The `weft_ipcache4` LPM trie: what the datapath knows of every address of the cluster, its
//! security identity and, for pods of other nodes, the tunnel endpoint (that node's underlay IP).
//! An address that matches no entry is the world.
//!
//! The trie's key is aya's `Key { prefix_len: u32, data: [u8; 4] }`, the address in network
//! order.

/// Reserved security identities (Cilium's numbers, so flows read the same).
pub mod identity {
    pub const UNKNOWN: u32 = 0;
    pub const HOST: u32 = 1;
    pub const WORLD: u32 = 2;
    pub const UNMANAGED: u32 = 3;
    pub const REMOTE_NODE: u32 = 6;
    /// Identities of pods, derived from their labels, start here.
    pub const FIRST_POD: u32 = 256;
    /// Identities fit the 24 bits Cilium allows.
    pub const MAX: u32 = (1 << 24) - 1;
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IpcacheEntry {
    pub identity: u32,
    /// Underlay IPv4 of the node that owns the address, network order; all zero for addresses
    /// that are not behind a tunnel (local pods, nodes themselves).
    pub tunnel_endpoint: [u8; 4],
}

impl IpcacheEntry {
    pub fn has_tunnel(&self) -> bool {
        self.tunnel_endpoint != [0; 4]
    }
}

pub const IPCACHE_MAX: u32 = 16384;

const _: () = assert!(core::mem::size_of::<IpcacheEntry>() == 8);
