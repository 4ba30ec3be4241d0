//! Capturing frames on an interface of a lab namespace with a packet socket, to prove which
//! way traffic went: the seed's reply must leave the backend's node for the router directly,
//! never pass the node that received the request.

use std::{
    mem::size_of,
    net::{Ipv4Addr, SocketAddrV4},
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
};

use anyhow::{Context as _, ensure};
use weft_packet::decode::{L3, L4, decode};

use crate::netns::run_in;

/// A packet socket bound to one interface, receiving every frame that crosses it (both
/// directions) from its creation on; closed when dropped.
pub struct Capture {
    socket: OwnedFd,
    pub netns: String,
    pub ifname: String,
}

const ETH_P_ALL: u16 = 0x0003;

impl Capture {
    pub fn start(netns: &str, ifname: &str) -> anyhow::Result<Capture> {
        let socket = run_in(netns, || open_bound(ifname))?
            .with_context(|| format!("capturing on {ifname} in {netns}"))?;
        Ok(Capture {
            socket,
            netns: netns.to_string(),
            ifname: ifname.to_string(),
        })
    }

    /// The frames received since the last call.
    pub fn drain(&self) -> Vec<Vec<u8>> {
        let mut frames = Vec::new();
        let mut buf = vec![0u8; 65_536];
        loop {
            // SAFETY: buf is writable for its length; MSG_DONTWAIT never blocks.
            let n = unsafe {
                libc::recv(
                    self.socket.as_raw_fd(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    libc::MSG_DONTWAIT,
                )
            };
            let Ok(n) = usize::try_from(n) else {
                return frames;
            };
            frames.push(buf[..n].to_vec());
        }
    }
}

fn open_bound(ifname: &str) -> anyhow::Result<OwnedFd> {
    let name = std::ffi::CString::new(ifname)?;
    // SAFETY: a valid NUL-terminated name.
    let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
    ensure!(ifindex != 0, "no interface {ifname}");
    let proto = i32::from(ETH_P_ALL.to_be());
    // SAFETY: plain socket(2); the result is checked before use.
    let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, proto) };
    ensure!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
    // SAFETY: fd is a fresh descriptor we own.
    let socket = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: sockaddr_ll is plain data; zero is a valid starting value.
    let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    addr.sll_family = libc::AF_PACKET as u16;
    addr.sll_protocol = ETH_P_ALL.to_be();
    addr.sll_ifindex = ifindex as i32;
    // SAFETY: addr is a valid sockaddr_ll for its length.
    let ret = unsafe {
        libc::bind(
            socket.as_raw_fd(),
            (&addr as *const libc::sockaddr_ll).cast(),
            size_of::<libc::sockaddr_ll>() as libc::socklen_t,
        )
    };
    ensure!(ret == 0, "bind: {}", std::io::Error::last_os_error());
    Ok(socket)
}

/// How many of `frames` are TCP segments from `from` to address `to`.
pub fn tcp_segments(frames: &[Vec<u8>], from: SocketAddrV4, to: Ipv4Addr) -> usize {
    frames
        .iter()
        .filter_map(|f| decode(f).ok())
        .filter(|d| match (&d.l3, &d.l4) {
            (L3::Ipv4 { src, dst, .. }, L4::Tcp { sport, .. }) => {
                *src == *from.ip() && *sport == from.port() && *dst == to
            }
            _ => false,
        })
        .count()
}

#[cfg(test)]
mod tests {
    use weft_packet::{PacketBuilder, TCP_ACK};

    use super::*;

    #[test]
    fn segments_are_counted_by_source_address_port_and_destination() {
        let service = SocketAddrV4::new(Ipv4Addr::new(198, 51, 100, 2), 443);
        let client = Ipv4Addr::new(203, 0, 113, 4);
        let reply = PacketBuilder::new()
            .ipv4(*service.ip(), client)
            .tcp(443, 40000, TCP_ACK)
            .build();
        let other_port = PacketBuilder::new()
            .ipv4(*service.ip(), client)
            .tcp(80, 40000, TCP_ACK)
            .build();
        let request = PacketBuilder::new()
            .ipv4(client, *service.ip())
            .tcp(40000, 443, TCP_ACK)
            .build();
        let frames = vec![reply.clone(), other_port, request, reply, vec![1, 2, 3]];
        assert_eq!(tcp_segments(&frames, service, client), 2);
    }
}
