//! The server: a fixed pool of threads, each accepting on the one listener and serving one
//! connection at a time, so that no thread is spawned per connection (that would cost more than
//! the connection itself at crr rates).

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use anyhow::Context;

use crate::protocol::{CONNECT_RR, ECHO, REPLY};

/// Largest read of the echo loop.
const ECHO_BUFFER: usize = 64 * 1024;

/// Pause after a failed accept (e.g. out of file descriptors) so a worker does not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(10);

/// Serves on `listen` until the process is killed.
pub fn serve(listen: SocketAddr, workers: u16) -> anyhow::Result<()> {
    let listener = TcpListener::bind(listen).with_context(|| format!("listening on {listen}"))?;
    let handles = start(&listener, workers)?;
    eprintln!("weft-netbench: listening on {listen} with {workers} workers");
    for handle in handles {
        // A worker only ends by panicking; the others keep serving meanwhile.
        if handle.join().is_err() {
            anyhow::bail!("a server worker panicked");
        }
    }
    Ok(())
}

/// Starts `workers` threads serving connections accepted on `listener`.
pub fn start(listener: &TcpListener, workers: u16) -> anyhow::Result<Vec<JoinHandle<()>>> {
    (0..workers)
        .map(|_| {
            let listener = listener.try_clone().context("cloning the listener")?;
            Ok(thread::spawn(move || accept_loop(&listener)))
        })
        .collect()
}

fn accept_loop(listener: &TcpListener) {
    loop {
        match listener.accept() {
            Ok((stream, peer)) => {
                if let Err(e) = serve_connection(stream) {
                    eprintln!("weft-netbench: connection from {peer}: {e}");
                }
            }
            Err(e) => {
                eprintln!("weft-netbench: accept: {e}");
                thread::sleep(ACCEPT_BACKOFF);
            }
        }
    }
}

fn serve_connection(mut stream: TcpStream) -> io::Result<()> {
    stream.set_nodelay(true)?;
    let mut request = [0u8; 1];
    if stream.read(&mut request)? == 0 {
        return Ok(());
    }
    match request[0] {
        // Dropping the stream right after the reply makes the server the side that closes
        // first, and so the side that holds TIME_WAIT (see client::one_connection).
        CONNECT_RR => stream.write_all(&[REPLY]),
        ECHO => echo(stream),
        other => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("unknown request byte {other:#04x}"),
        )),
    }
}

fn echo(mut stream: TcpStream) -> io::Result<()> {
    let mut buffer = vec![0u8; ECHO_BUFFER];
    loop {
        let n = stream.read(&mut buffer)?;
        if n == 0 {
            return Ok(());
        }
        stream.write_all(&buffer[..n])?;
    }
}
