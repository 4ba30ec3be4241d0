//! Reads of the agent-written state: this node, its endpoints, the ipcache.

use aya_ebpf::{maps::lpm_trie::Key, programs::TcContext};
use weft_common::{EndpointInfo, EndpointKey, IpcacheEntry, NodeConfig, Reason, ipcache::identity};

use crate::{
    maps::{ENDPOINTS, IPCACHE4, NODE},
    packet::Packet,
};

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

/// Whether `addr` is the underlay address of another node of the cluster (its ipcache /32 has
/// the remote-node identity). This node's own address is not: it never tunnels to itself, so
/// a packet from it arriving on the wire is forged.
#[inline(always)]
pub fn is_other_node(addr: [u8; 4]) -> bool {
    ipcache(addr).is_some_and(|e| e.identity == identity::REMOTE_NODE)
}

/// The local endpoint that sent a packet from address `addr` and MAC `mac` on this interface;
/// anything else is a spoofed source (anti-spoofing for IPv4 and ARP alike).
#[inline(always)]
pub fn source_endpoint(
    ctx: &TcContext,
    addr: [u8; 4],
    mac: [u8; 6],
) -> Result<EndpointInfo, Reason> {
    match endpoint(addr) {
        Some(ep) if ep.ifindex == Packet::ifindex(ctx) && ep.mac == mac => Ok(ep),
        _ => Err(Reason::InvalidSource),
    }
}
