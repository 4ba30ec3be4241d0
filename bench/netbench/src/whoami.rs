//! `whoami`: a server that answers every TCP connection with the address it sees the client
//! at, one line, then closes. The seed's question — does the backend see the client's own
//! address? — asked of a real socket.

use std::{
    io::Write as _,
    net::{SocketAddr, TcpListener, TcpStream},
    thread,
    time::Duration,
};

use anyhow::Context as _;

const ACCEPT_BACKOFF: Duration = Duration::from_millis(10);

/// Serves on `listen` until the process is killed.
pub fn serve(listen: SocketAddr) -> anyhow::Result<()> {
    let listener = TcpListener::bind(listen).with_context(|| format!("listening on {listen}"))?;
    eprintln!("weft-netbench: whoami on {listen}");
    loop {
        match listener.accept() {
            Ok((stream, peer)) => {
                if let Err(e) = answer(stream, peer) {
                    eprintln!("weft-netbench: whoami to {peer}: {e}");
                }
            }
            Err(e) => {
                eprintln!("weft-netbench: accept: {e}");
                thread::sleep(ACCEPT_BACKOFF);
            }
        }
    }
}

fn answer(mut stream: TcpStream, peer: SocketAddr) -> std::io::Result<()> {
    stream.write_all(format!("{peer}\n").as_bytes())
}

#[cfg(test)]
mod tests {
    use std::io::Read as _;

    use super::*;

    #[test]
    fn the_answer_is_the_clients_address() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let server = thread::spawn(move || {
            let (stream, peer) = listener.accept().unwrap();
            answer(stream, peer).unwrap();
        });
        let mut client = TcpStream::connect(addr).unwrap();
        let mut text = String::new();
        client.read_to_string(&mut text).unwrap();
        server.join().unwrap();
        assert_eq!(text, format!("{}\n", client.local_addr().unwrap()));
    }
}
