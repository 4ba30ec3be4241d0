//! The clients: `rr` times round trips on one connection, `crr` times whole short connections.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::Context;

use crate::protocol::{CONNECT_RR, ECHO, REPLY};
use crate::stats::{CrrReport, RrReport, Summary};

/// Untimed round trips before an `rr` run, to get past slow start and cold caches.
const RR_WARMUP: usize = 100;

/// Room for this many samples from the start, so that growing the vector rarely lands in a
/// timed transaction.
const SAMPLE_CAPACITY: usize = 1 << 18;

/// `rr`: one connection, TCP_NODELAY, `size`-byte request and response, back to back.
pub fn request_response(to: SocketAddr, duration: Duration, size: u32) -> anyhow::Result<RrReport> {
    let mut stream = TcpStream::connect(to).with_context(|| format!("connecting to {to}"))?;
    stream.set_nodelay(true)?;
    stream.write_all(&[ECHO])?;
    let size_bytes = usize::try_from(size).context("message size")?;
    let request = vec![0x5a; size_bytes];
    let mut response = vec![0; size_bytes];
    for _ in 0..RR_WARMUP {
        round_trip(&mut stream, &request, &mut response).context("warm-up round trip")?;
    }

    let mut samples = Vec::with_capacity(SAMPLE_CAPACITY);
    let start = Instant::now();
    let deadline = start + duration;
    // One clock read per transaction: the end of one is the start of the next.
    let mut last = start;
    while last < deadline {
        round_trip(&mut stream, &request, &mut response).context("round trip")?;
        let now = Instant::now();
        samples.push(nanos(now - last));
        last = now;
    }
    let summary = Summary::from_nanos(samples, last - start).context("no round trip completed")?;
    Ok(RrReport { size, summary })
}

fn round_trip(stream: &mut TcpStream, request: &[u8], response: &mut [u8]) -> io::Result<()> {
    stream.write_all(request)?;
    stream.read_exact(response)
}

/// `crr`: `parallel` threads, each connecting, exchanging one byte each way and closing, over
/// and over until `duration` has passed. Any failed connection fails the run: a benchmark that
/// silently skips errors would report a rate the path does not have.
pub fn connect_request_response(
    to: SocketAddr,
    duration: Duration,
    parallel: u16,
) -> anyhow::Result<CrrReport> {
    let start = Instant::now();
    let deadline = start + duration;
    let workers: Vec<_> = (0..parallel)
        .map(|_| thread::spawn(move || connections_until(to, deadline)))
        .collect();
    let mut samples = Vec::new();
    for worker in workers {
        let mine = worker
            .join()
            .map_err(|_| anyhow::anyhow!("a crr worker panicked"))?
            .with_context(|| format!("a connection to {to}"))?;
        samples.extend(mine);
    }
    let summary =
        Summary::from_nanos(samples, start.elapsed()).context("no connection completed")?;
    Ok(CrrReport { parallel, summary })
}

fn connections_until(to: SocketAddr, deadline: Instant) -> io::Result<Vec<u64>> {
    let mut samples = Vec::with_capacity(SAMPLE_CAPACITY);
    while Instant::now() < deadline {
        samples.push(nanos(one_connection(to)?));
    }
    Ok(samples)
}

/// One connect-request-response-close; returns the time from connect to the response.
///
/// The server closes first and the client waits for its FIN before closing, as netperf's
/// TCP_CRR does. TIME_WAIT thus stays on the server, keyed by the client's port, and the
/// client's ephemeral ports are free again at once: at tens of thousands of connections per
/// second a client-side TIME_WAIT would exhaust the 28k-port ephemeral range within seconds.
/// The alternative, SO_LINGER 0 on the client, would end every connection with a RST, which is
/// not the close a real client does and takes a different path through conntrack.
fn one_connection(to: SocketAddr) -> io::Result<Duration> {
    let begin = Instant::now();
    let mut stream = TcpStream::connect(to)?;
    // Nagle cannot delay this byte: nothing is in flight yet, so no TCP_NODELAY syscall.
    stream.write_all(&[CONNECT_RR])?;
    let mut reply = [0u8; 1];
    stream.read_exact(&mut reply)?;
    let took = begin.elapsed();
    if reply[0] != REPLY {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("unexpected reply byte {:#04x}", reply[0]),
        ));
    }
    expect_eof(&mut stream)?;
    Ok(took)
}

fn expect_eof(stream: &mut TcpStream) -> io::Result<()> {
    let mut extra = [0u8; 1];
    match stream.read(&mut extra)? {
        0 => Ok(()),
        _ => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "the server sent more than one byte",
        )),
    }
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use std::net::TcpListener;

    use super::*;
    use crate::server;

    /// Both clients against the server over loopback (no root needed).
    #[test]
    fn clients_complete_against_the_server() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let to = listener.local_addr().unwrap();
        let _workers = server::start(&listener, 4).unwrap();

        let rr = request_response(to, Duration::from_millis(200), 64).unwrap();
        assert!(rr.summary.count > 0);
        assert!(rr.summary.p50_us <= rr.summary.p99_us);

        let crr = connect_request_response(to, Duration::from_millis(200), 2).unwrap();
        assert!(crr.summary.count > 0);
        assert_eq!(crr.parallel, 2);
    }

    #[test]
    fn crr_fails_when_nothing_listens() {
        let to = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        assert!(connect_request_response(to, Duration::from_millis(100), 1).is_err());
    }
}
