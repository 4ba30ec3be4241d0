//! The `healthCheckNodePort` answers of `externalTrafficPolicy: Local` services, as kube-proxy
//! gives them: an HTTP GET on the port returns 200 when this node has a local endpoint of the
//! service and 503 when it has none, with a JSON body naming the service and the count. A load
//! balancer in front of the nodes uses them to send traffic only to nodes that will not drop
//! it.

use std::{
    collections::BTreeMap,
    io::{ErrorKind, Read as _, Write as _},
    net::{Ipv4Addr, SocketAddrV4, TcpListener, TcpStream},
    time::Duration,
};

use anyhow::Context as _;

use crate::log;

/// What one health port answers for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HealthCheck {
    pub namespace: String,
    pub name: String,
    pub local_endpoints: usize,
}

/// The listeners, one per port, and what each answers.
#[derive(Debug)]
pub struct HealthServer {
    listeners: BTreeMap<u16, (TcpListener, HealthCheck)>,
    address: Ipv4Addr,
}

/// How long a client may take to send its request.
const READ_TIMEOUT: Duration = Duration::from_millis(200);

impl HealthServer {
    /// Answers on `address`, the node's address.
    pub fn on(address: Ipv4Addr) -> HealthServer {
        HealthServer {
            listeners: BTreeMap::new(),
            address,
        }
    }

    pub fn ports(&self) -> Vec<u16> {
        self.listeners.keys().copied().collect()
    }

    /// Opens the ports of `wanted` not open yet, closes those no longer wanted, updates what
    /// the others answer. A port that cannot be bound is reported and retried next time.
    pub fn reconcile(&mut self, wanted: &BTreeMap<u16, HealthCheck>) -> Vec<String> {
        self.listeners.retain(|port, _| wanted.contains_key(port));
        let mut errors = Vec::new();
        for (&port, check) in wanted {
            if let Some((_, current)) = self.listeners.get_mut(&port) {
                *current = check.clone();
                continue;
            }
            match self.bind(port) {
                Ok(listener) => {
                    log!(
                        "health: answering for {}/{} on port {port}",
                        check.namespace,
                        check.name
                    );
                    self.listeners.insert(port, (listener, check.clone()));
                }
                Err(e) => errors.push(format!("health port {port}: {e:#}")),
            }
        }
        errors
    }

    fn bind(&self, port: u16) -> anyhow::Result<TcpListener> {
        let address = SocketAddrV4::new(self.address, port);
        let listener = TcpListener::bind(address).with_context(|| format!("binding {address}"))?;
        listener
            .set_nonblocking(true)
            .context("making the listener non-blocking")?;
        Ok(listener)
    }

    /// Answers every connection waiting now; returns how many.
    pub fn serve_pending(&self) -> usize {
        let mut served = 0;
        for (listener, check) in self.listeners.values() {
            loop {
                match listener.accept() {
                    Ok((stream, _)) => {
                        served += 1;
                        if let Err(e) = answer(stream, check) {
                            log!("health: {e:#}");
                        }
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    Err(e) => {
                        log!("health: accept: {e}");
                        break;
                    }
                }
            }
        }
        served
    }
}

fn answer(mut stream: TcpStream, check: &HealthCheck) -> anyhow::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(READ_TIMEOUT))?;
    // The request itself does not matter (any path answers, as kube-proxy's does); read what
    // has arrived so that closing does not reset the connection under the client.
    let mut request = [0u8; 1024];
    let _ = stream.read(&mut request);
    stream.write_all(response(check).as_bytes())?;
    Ok(())
}

/// The HTTP response for `check`.
pub fn response(check: &HealthCheck) -> String {
    let status = if check.local_endpoints > 0 {
        "200 OK"
    } else {
        "503 Service Unavailable"
    };
    let body = format!(
        "{{\"service\":{{\"namespace\":{},\"name\":{}}},\"localEndpoints\":{}}}",
        json_string(&check.namespace),
        json_string(&check.name),
        check.local_endpoints
    );
    format!(
        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nX-Content-Type-Options: nosniff\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}

fn json_string(text: &str) -> String {
    serde_json::Value::String(text.to_string()).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(local_endpoints: usize) -> HealthCheck {
        HealthCheck {
            namespace: "default".into(),
            name: "web".into(),
            local_endpoints,
        }
    }

    fn get(port: u16, server: &HealthServer) -> String {
        let mut stream = TcpStream::connect((Ipv4Addr::LOCALHOST, port)).unwrap();
        stream
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while server.serve_pending() == 0 && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        let mut text = String::new();
        stream.read_to_string(&mut text).unwrap();
        text
    }

    fn free_port() -> u16 {
        TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    }

    #[test]
    fn a_port_answers_200_with_local_endpoints_and_503_without() {
        let port = free_port();
        let mut server = HealthServer::on(Ipv4Addr::LOCALHOST);
        assert!(
            server
                .reconcile(&BTreeMap::from([(port, check(2))]))
                .is_empty()
        );
        let text = get(port, &server);
        assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
        assert!(
            text.ends_with(
                "{\"service\":{\"namespace\":\"default\",\"name\":\"web\"},\"localEndpoints\":2}"
            ),
            "{text}"
        );
        server.reconcile(&BTreeMap::from([(port, check(0))]));
        let text = get(port, &server);
        assert!(text.starts_with("HTTP/1.1 503 "), "{text}");
        assert!(text.contains("\"localEndpoints\":0"));
    }

    #[test]
    fn ports_no_longer_wanted_are_closed_and_a_taken_port_is_reported() {
        let port = free_port();
        let mut server = HealthServer::on(Ipv4Addr::LOCALHOST);
        server.reconcile(&BTreeMap::from([(port, check(1))]));
        assert_eq!(server.ports(), [port]);
        server.reconcile(&BTreeMap::new());
        assert!(server.ports().is_empty());
        assert!(TcpStream::connect((Ipv4Addr::LOCALHOST, port)).is_err());

        let taken = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let taken_port = taken.local_addr().unwrap().port();
        let errors = server.reconcile(&BTreeMap::from([(taken_port, check(1))]));
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(errors[0].contains(&taken_port.to_string()));
    }
}
