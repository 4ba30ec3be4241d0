//! Real traffic between the lab's namespaces: every socket is created inside the namespace of
//! the endpoint it stands for and then used from the calling thread. Every wait has a timeout,
//! so a broken datapath fails a check instead of hanging it.

use std::{
    io::{Read as _, Write as _},
    mem::size_of,
    net::{Ipv4Addr, SocketAddrV4, TcpListener, TcpStream, UdpSocket},
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use anyhow::{Context as _, bail, ensure};

use crate::netns::run_in;

pub const TIMEOUT: Duration = Duration::from_secs(5);

/// A TCP connection from `client_netns` to `server` (listening in `server_netns`): sends
/// `payload`, expects it echoed back. Returns the client address the server saw.
pub fn tcp_echo(
    client_netns: &str,
    server_netns: &str,
    server: SocketAddrV4,
    payload: &[u8],
) -> anyhow::Result<std::net::SocketAddr> {
    let listener = run_in(server_netns, || TcpListener::bind(server))?
        .with_context(|| format!("listening on {server} in {server_netns}"))?;
    std::thread::scope(|scope| {
        let echo = scope.spawn(|| -> anyhow::Result<std::net::SocketAddr> {
            listener.set_nonblocking(false)?;
            let (mut conn, peer) = accept_with_timeout(&listener)?;
            conn.set_read_timeout(Some(TIMEOUT))?;
            let mut buf = vec![0u8; payload.len()];
            conn.read_exact(&mut buf).context("server read")?;
            conn.write_all(&buf).context("server write")?;
            Ok(peer)
        });
        let client = || -> anyhow::Result<()> {
            let mut stream = run_in(client_netns, || {
                TcpStream::connect_timeout(&server.into(), TIMEOUT)
            })?
            .with_context(|| format!("connecting from {client_netns} to {server}"))?;
            stream.set_read_timeout(Some(TIMEOUT))?;
            stream.write_all(payload).context("client write")?;
            let mut back = vec![0u8; payload.len()];
            stream
                .read_exact(&mut back)
                .context("client read of the echo")?;
            ensure!(back == payload, "the echo differs from what was sent");
            Ok(())
        };
        let client_result = client();
        if client_result.is_err() {
            // Unblock the server side: connect to it locally so accept returns.
            let _ = run_in(server_netns, || {
                TcpStream::connect_timeout(&server.into(), TIMEOUT)
            });
        }
        let server_result = echo
            .join()
            .map_err(|_| anyhow::anyhow!("echo server panicked"))?;
        client_result?;
        server_result
    })
}

/// A TCP round trip from `client_netns` to an echo server that runs elsewhere (in a container,
/// say): connects, retrying while nothing listens yet, sends `payload` and expects it back.
pub fn tcp_round_trip(
    client_netns: &str,
    server: SocketAddrV4,
    payload: &[u8],
) -> anyhow::Result<()> {
    let deadline = std::time::Instant::now() + TIMEOUT;
    let mut stream = loop {
        match run_in(client_netns, || {
            TcpStream::connect_timeout(&server.into(), TIMEOUT)
        })? {
            Ok(stream) => break stream,
            Err(e)
                if e.kind() == std::io::ErrorKind::ConnectionRefused
                    && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(e) => {
                return Err(e)
                    .with_context(|| format!("connecting from {client_netns} to {server}"));
            }
        }
    };
    stream.set_read_timeout(Some(TIMEOUT))?;
    stream.write_all(payload).context("client write")?;
    let mut back = vec![0u8; payload.len()];
    stream
        .read_exact(&mut back)
        .with_context(|| format!("reading the echo from {server}"))?;
    ensure!(
        back == payload,
        "the echo from {server} differs from what was sent"
    );
    Ok(())
}

fn accept_with_timeout(
    listener: &TcpListener,
) -> anyhow::Result<(TcpStream, std::net::SocketAddr)> {
    let mut pfd = libc::pollfd {
        fd: listener.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd.
    let ready = unsafe { libc::poll(&mut pfd, 1, TIMEOUT.as_millis() as libc::c_int) };
    ensure!(ready == 1, "no connection arrived within {TIMEOUT:?}");
    Ok(listener.accept()?)
}

/// A UDP datagram from `client_netns` to `server`, answered by the server; returns the source
/// address the server saw.
pub fn udp_echo(
    client_netns: &str,
    server_netns: &str,
    server: SocketAddrV4,
    payload: &[u8],
) -> anyhow::Result<std::net::SocketAddr> {
    let server_sock = run_in(server_netns, || UdpSocket::bind(server))?
        .with_context(|| format!("binding {server} in {server_netns}"))?;
    server_sock.set_read_timeout(Some(TIMEOUT))?;
    let client = run_in(client_netns, || UdpSocket::bind("0.0.0.0:0"))??;
    client.set_read_timeout(Some(TIMEOUT))?;
    client.send_to(payload, server)?;
    let mut buf = [0u8; 2048];
    let (n, peer) = server_sock
        .recv_from(&mut buf)
        .context("the datagram did not reach the server")?;
    ensure!(&buf[..n] == payload, "the server got other bytes");
    server_sock.send_to(&buf[..n], peer)?;
    let (m, _) = client
        .recv_from(&mut buf)
        .context("no answer reached the client")?;
    ensure!(&buf[..m] == payload, "the client got other bytes");
    Ok(peer)
}

/// An ICMP echo request from `netns` to `dst` over a raw socket; waits for the matching reply.
pub fn icmp_echo(netns: &str, dst: Ipv4Addr, id: u16, seq: u16) -> anyhow::Result<()> {
    let sock = run_in(netns, || {
        raw_socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_ICMP)
    })??;
    set_recv_timeout(&sock)?;
    let mut request = vec![8u8, 0, 0, 0];
    request.extend_from_slice(&id.to_be_bytes());
    request.extend_from_slice(&seq.to_be_bytes());
    request.extend_from_slice(b"weft-lab");
    let csum = weft_packet::internet_checksum(&request);
    request[2..4].copy_from_slice(&csum.to_be_bytes());
    let addr = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: 0,
        sin_addr: libc::in_addr {
            s_addr: u32::from(dst).to_be(),
        },
        sin_zero: [0; 8],
    };
    // SAFETY: buffer and address are valid for the lengths given.
    let sent = unsafe {
        libc::sendto(
            sock.as_raw_fd(),
            request.as_ptr().cast(),
            request.len(),
            0,
            (&addr as *const libc::sockaddr_in).cast(),
            size_of::<libc::sockaddr_in>() as libc::socklen_t,
        )
    };
    ensure!(sent >= 0, "sendto: {}", std::io::Error::last_os_error());
    let deadline = std::time::Instant::now() + TIMEOUT;
    let mut buf = [0u8; 1500];
    while std::time::Instant::now() < deadline {
        // SAFETY: buf is writable for its length.
        let n = unsafe { libc::recv(sock.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n < 0 {
            bail!(
                "no echo reply from {dst}: {}",
                std::io::Error::last_os_error()
            );
        }
        let pkt = &buf[..n as usize];
        let ihl = usize::from(pkt.first().copied().unwrap_or(0) & 0x0f) * 4;
        let icmp = pkt.get(ihl..).unwrap_or_default();
        if icmp.len() >= 8
            && icmp[0] == 0
            && icmp[4..6] == id.to_be_bytes()
            && icmp[6..8] == seq.to_be_bytes()
        {
            return Ok(());
        }
    }
    bail!("no echo reply from {dst} within {TIMEOUT:?}")
}

/// Sends `frame` (a whole Ethernet frame) out of interface `ifname` of `netns` from a packet
/// socket, bypassing the stack: how a misbehaving pod puts garbage on the wire.
pub fn send_raw_frame(netns: &str, ifname: &str, frame: &[u8]) -> anyhow::Result<()> {
    send_raw_frames(netns, ifname, &[frame.to_vec()], usize::MAX, Duration::ZERO)
}

/// Sends `frames` like [`send_raw_frame`], from one packet socket, pausing `pause` after every
/// `burst` frames: a veth hands what it is sent to a per-CPU backlog of its peer (1,000
/// packets by default) and drops the rest, so a flood that must arrive whole is paced.
pub fn send_raw_frames(
    netns: &str,
    ifname: &str,
    frames: &[Vec<u8>],
    burst: usize,
    pause: Duration,
) -> anyhow::Result<()> {
    run_in(netns, || -> anyhow::Result<()> {
        let sock = raw_socket(libc::AF_PACKET, libc::SOCK_RAW, 0)?;
        let name = std::ffi::CString::new(ifname)?;
        // SAFETY: a valid NUL-terminated name.
        let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
        ensure!(ifindex != 0, "no interface {ifname} in {netns}");
        for (i, frame) in frames.iter().enumerate() {
            // SAFETY: sockaddr_ll is plain data; zero is a valid starting value.
            let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
            addr.sll_family = libc::AF_PACKET as u16;
            addr.sll_ifindex = ifindex as i32;
            addr.sll_halen = 6;
            addr.sll_addr[..6].copy_from_slice(frame.get(..6).unwrap_or(&[0; 6]));
            // SAFETY: frame and address are valid for the lengths given.
            let sent = unsafe {
                libc::sendto(
                    sock.as_raw_fd(),
                    frame.as_ptr().cast(),
                    frame.len(),
                    0,
                    (&addr as *const libc::sockaddr_ll).cast(),
                    size_of::<libc::sockaddr_ll>() as libc::socklen_t,
                )
            };
            ensure!(
                sent as usize == frame.len(),
                "sendto of frame {i}: {}",
                std::io::Error::last_os_error()
            );
            if (i + 1) % burst.max(1) == 0 {
                std::thread::sleep(pause);
            }
        }
        Ok(())
    })?
}

/// A TCP server in a namespace that accepts every connection and reads it to its end (then
/// closes it), on a few threads, until dropped.
pub struct TcpSink {
    stop: Arc<AtomicBool>,
    accepted: Arc<AtomicU64>,
    workers: Vec<std::thread::JoinHandle<()>>,
}

impl TcpSink {
    /// Listens on `addr` in `netns` with a backlog of 4,096 (std's 128 would turn a burst of
    /// connects into SYN retransmissions).
    pub fn start(netns: &str, addr: SocketAddrV4, threads: usize) -> anyhow::Result<TcpSink> {
        let listener = run_in(netns, || listen(addr))?
            .with_context(|| format!("listening on {addr} in {netns}"))?;
        listener.set_nonblocking(true)?;
        let stop = Arc::new(AtomicBool::new(false));
        let accepted = Arc::new(AtomicU64::new(0));
        let mut workers = Vec::new();
        for _ in 0..threads.max(1) {
            let listener = listener.try_clone()?;
            let (stop, accepted) = (stop.clone(), accepted.clone());
            workers.push(std::thread::spawn(move || {
                sink_connections(&listener, &stop, &accepted)
            }));
        }
        Ok(TcpSink {
            stop,
            accepted,
            workers,
        })
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> u64 {
        self.accepted.load(Ordering::Relaxed)
    }
}

impl Drop for TcpSink {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for worker in self.workers.drain(..) {
            let _ = worker.join();
        }
    }
}

fn listen(addr: SocketAddrV4) -> anyhow::Result<TcpListener> {
    use nix::sys::socket::{
        AddressFamily, Backlog, SockFlag, SockType, SockaddrIn, bind, setsockopt, socket,
        sockopt::ReuseAddr,
    };
    let fd = socket(
        AddressFamily::Inet,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    setsockopt(&fd, ReuseAddr, &true)?;
    bind(fd.as_raw_fd(), &SockaddrIn::from(addr))?;
    nix::sys::socket::listen(&fd, Backlog::new(4096)?)?;
    Ok(TcpListener::from(fd))
}

fn sink_connections(listener: &TcpListener, stop: &AtomicBool, accepted: &AtomicU64) {
    while !stop.load(Ordering::Relaxed) {
        match listener.accept() {
            Ok((mut conn, _)) => {
                accepted.fetch_add(1, Ordering::Relaxed);
                let _ = conn.set_nonblocking(false);
                let _ = conn.set_read_timeout(Some(TIMEOUT));
                let _ = std::io::copy(&mut conn, &mut std::io::sink());
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                let mut pfd = libc::pollfd {
                    fd: listener.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                };
                // SAFETY: one valid pollfd.
                unsafe { libc::poll(&mut pfd, 1, 100) };
            }
            Err(_) => std::thread::sleep(Duration::from_millis(10)),
        }
    }
}

/// What a run of connects came to.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConnectReport {
    pub attempted: u32,
    pub failed: u32,
    /// The first failure, for the message.
    pub first_error: Option<String>,
}

/// `count` TCP connections from `netns` to `server`, one after another, each closed as soon as
/// it is up; a connect that does not complete within `timeout` fails. Gives up after
/// `give_up_after` failures (a broken path would otherwise cost `timeout` per connect).
pub fn connect_and_close(
    netns: &str,
    server: SocketAddrV4,
    count: u32,
    timeout: Duration,
    give_up_after: u32,
) -> anyhow::Result<ConnectReport> {
    run_in(netns, || {
        let mut report = ConnectReport::default();
        while report.attempted < count && report.failed < give_up_after {
            report.attempted += 1;
            if let Err(e) = TcpStream::connect_timeout(&server.into(), timeout) {
                report.failed += 1;
                report
                    .first_error
                    .get_or_insert_with(|| format!("connect {}: {e}", report.attempted));
            }
        }
        report
    })
}

fn raw_socket(domain: libc::c_int, ty: libc::c_int, proto: libc::c_int) -> anyhow::Result<OwnedFd> {
    // SAFETY: plain socket(2) call; the result is checked before use.
    let fd = unsafe { libc::socket(domain, ty | libc::SOCK_CLOEXEC, proto) };
    ensure!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
    // SAFETY: fd is a fresh descriptor we own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn set_recv_timeout(sock: &OwnedFd) -> anyhow::Result<()> {
    let tv = libc::timeval {
        tv_sec: TIMEOUT.as_secs() as libc::time_t,
        tv_usec: 0,
    };
    // SAFETY: tv is a valid timeval for SO_RCVTIMEO.
    let ret = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&tv as *const libc::timeval).cast(),
            size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
    ensure!(ret == 0, "SO_RCVTIMEO: {}", std::io::Error::last_os_error());
    Ok(())
}
