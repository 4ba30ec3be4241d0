//! `probe`: one TCP connection or one UDP datagram, echoed by a plain echo server, reporting
//! the addresses the client's socket shows. The lab's tests run it inside a node's cgroup, where
//! the socket load balancer applies, to check what an application sees: `getpeername` of a
//! connection and the source of a `recvfrom` must be the service address it asked for.

use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpStream, UdpSocket},
    time::Duration,
};

use anyhow::{Context as _, ensure};

const TIMEOUT: Duration = Duration::from_secs(5);

/// What the client saw.
#[derive(Debug, PartialEq, Eq)]
pub struct ProbeReport {
    /// `getpeername` (TCP) or the source of the echo (UDP).
    pub peer: SocketAddr,
    pub local: SocketAddr,
}

impl ProbeReport {
    pub fn to_json(&self) -> String {
        format!(
            "{{\"peer\":\"{}\",\"local\":\"{}\"}}",
            self.peer, self.local
        )
    }
}

pub fn tcp(to: SocketAddr, payload: &[u8]) -> anyhow::Result<ProbeReport> {
    let mut stream =
        TcpStream::connect_timeout(&to, TIMEOUT).with_context(|| format!("connecting to {to}"))?;
    stream.set_read_timeout(Some(TIMEOUT))?;
    stream.write_all(payload).context("sending")?;
    let mut back = vec![0; payload.len()];
    stream.read_exact(&mut back).context("reading the echo")?;
    ensure!(back == payload, "the echo differs from what was sent");
    Ok(ProbeReport {
        peer: stream.peer_addr().context("getpeername")?,
        local: stream.local_addr().context("getsockname")?,
    })
}

/// An unconnected socket: `sendto` then `recvfrom`.
pub fn udp(to: SocketAddr, payload: &[u8]) -> anyhow::Result<ProbeReport> {
    let socket = UdpSocket::bind("0.0.0.0:0").context("binding a UDP socket")?;
    socket.set_read_timeout(Some(TIMEOUT))?;
    socket.send_to(payload, to).context("sendto")?;
    let mut buf = vec![0; payload.len() + 1];
    let (n, from) = socket.recv_from(&mut buf).context("recvfrom of the echo")?;
    ensure!(buf[..n] == *payload, "the echo differs from what was sent");
    Ok(ProbeReport {
        peer: from,
        local: socket.local_addr().context("getsockname")?,
    })
}

#[cfg(test)]
mod tests {
    use std::net::TcpListener;

    use super::*;

    #[test]
    fn tcp_and_udp_probes_report_the_echo_servers_address() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let server = listener.local_addr().unwrap();
        let echo = std::thread::spawn(move || {
            let (mut conn, _) = listener.accept().unwrap();
            let mut buf = [0; 5];
            conn.read_exact(&mut buf).unwrap();
            conn.write_all(&buf).unwrap();
        });
        let report = tcp(server, b"hello").unwrap();
        echo.join().unwrap();
        assert_eq!(report.peer, server);

        let udp_server = UdpSocket::bind("127.0.0.1:0").unwrap();
        let addr = udp_server.local_addr().unwrap();
        let echo = std::thread::spawn(move || {
            let mut buf = [0; 16];
            let (n, from) = udp_server.recv_from(&mut buf).unwrap();
            udp_server.send_to(&buf[..n], from).unwrap();
        });
        let report = udp(addr, b"dgram").unwrap();
        echo.join().unwrap();
        assert_eq!(report.peer, addr);
        assert!(report.to_json().contains(&format!("\"peer\":\"{addr}\"")));
    }
}
