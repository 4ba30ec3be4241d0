//! Reads of the agent-written state: this node, its endpoints, the ipcache.

use aya_ebpf::maps::lpm_trie::Key;
use weft_common::{EndpointInfo, EndpointKey, IpcacheEntry, NodeConfig};

use crate::maps::{ENDPOINTS, IPCACHE4, NODE};

/// This node's record, or `None` before the agent has written it.
#[inline(always)]
pub fn node() -> Option<NodeConfig> {
    NODE.get(0).copied().filter(NodeConfig::is_configured)
}

#[inline(always)]
pub fn endpoint(addr: [u8; 4]) -> Option<EndpointInfo> {
    // SAFETY: the value is copied out before the map can change under it.
    unsafe { ENDPOINTS.get(EndpointKey { addr }) }.copied()
}

#[inline(always)]
pub fn ipcache(addr: [u8; 4]) -> Option<IpcacheEntry> {
    IPCACHE4.get(Key::new(32, addr)).copied()
}
