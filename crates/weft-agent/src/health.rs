//! The `healthCheckNodePort` answers of `externalTrafficPolicy: Local` services, as kube-proxy
//! gives them: an HTTP GET on the port returns 200 when this node has a local endpoint of the
//! service and 503 when it has none, with a JSON body naming the service and the count. A load
//! balancer in front of the nodes uses them to send traffic only to nodes that will not drop
//! it.

use std::{
    collections::BTreeMap,
    io::{ErrorKind, Read as _, Write as _},
    net::{Ipv4Addr, SocketAddrV4, TcpListener, TcpStream},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    thread::{self, JoinHandle},
    time::Duration,
};

use anyhow::Context as _;

use crate::{log, server::Connections};

/// What one health port answers for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HealthCheck {
    pub namespace: String,
    pub name: String,
    pub local_endpoints: usize,
}

type Ports = Arc<Mutex<BTreeMap<u16, (TcpListener, HealthCheck)>>>;

/// The listeners, one per port, and what each answers. A thread of its own accepts their
/// connections and answers each in a thread of its own, so that neither the agent's loop nor
/// another client ever waits for a client.
#[derive(Debug)]
pub struct HealthServer {
    ports: Ports,
    address: Ipv4Addr,
    stopping: Arc<AtomicBool>,
    acceptor: Option<JoinHandle<()>>,
}

/// How long a client may take to send its request, and to take the answer.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(1);
/// How often the acceptor looks for connections when there were none.
const POLL: Duration = Duration::from_millis(20);
/// Health-check connections answered at once; more are closed unanswered.
const MAX_CONNECTIONS: usize = 64;

impl HealthServer {
    /// Answers on `address`, the node's address.
    pub fn on(address: Ipv4Addr) -> HealthServer {
        let ports = Ports::default();
        let stopping = Arc::new(AtomicBool::new(false));
        let acceptor = {
            let (ports, stopping) = (ports.clone(), stopping.clone());
            thread::Builder::new()
                .name("health-accept".into())
                .spawn(move || accept(&ports, &stopping))
        };
        let acceptor = match acceptor {
            Ok(handle) => Some(handle),
            Err(e) => {
                log!("health: cannot start the acceptor: {e}");
                None
            }
        };
        HealthServer {
            ports,
            address,
            stopping,
            acceptor,
        }
    }

    pub fn ports(&self) -> Vec<u16> {
        self.lock().keys().copied().collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<u16, (TcpListener, HealthCheck)>> {
        // A panic while holding the lock leaves plain data behind: keep using it.
        self.ports
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Opens the ports of `wanted` not open yet, closes those no longer wanted, updates what
    /// the others answer. A port that cannot be bound is reported and retried next time.
    pub fn reconcile(&mut self, wanted: &BTreeMap<u16, HealthCheck>) -> Vec<String> {
        let address = self.address;
        let mut listeners = self.lock();
        listeners.retain(|port, _| wanted.contains_key(port));
        let mut errors = Vec::new();
        for (&port, check) in wanted {
            if let Some((_, current)) = listeners.get_mut(&port) {
                *current = check.clone();
                continue;
            }
            match bind(address, port) {
                Ok(listener) => {
                    log!(
                        "health: answering for {}/{} on port {port}",
                        check.namespace,
                        check.name
                    );
                    listeners.insert(port, (listener, check.clone()));
                }
                Err(e) => errors.push(format!("health port {port}: {e:#}")),
            }
        }
        errors
    }
}

impl Drop for HealthServer {
    fn drop(&mut self) {
        self.stopping.store(true, Ordering::Relaxed);
        if let Some(acceptor) = self.acceptor.take()
            && acceptor.join().is_err()
        {
            log!("health: the acceptor panicked");
        }
    }
}

fn bind(address: Ipv4Addr, port: u16) -> anyhow::Result<TcpListener> {
    let address = SocketAddrV4::new(address, port);
    let listener = TcpListener::bind(address).with_context(|| format!("binding {address}"))?;
    listener
        .set_nonblocking(true)
        .context("making the listener non-blocking")?;
    Ok(listener)
}

/// Until `stopping`: takes the connections waiting on every port and answers each in a thread.
fn accept(ports: &Ports, stopping: &AtomicBool) {
    let connections = Connections::default();
    while !stopping.load(Ordering::Relaxed) {
        let waiting = pending(ports);
        if waiting.is_empty() {
            thread::sleep(POLL);
        }
        for (stream, check) in waiting {
            let Some(slot) = connections.take(MAX_CONNECTIONS) else {
                continue;
            };
            let spawned = thread::Builder::new()
                .name("health-conn".into())
                .spawn(move || {
                    if let Err(e) = answer(stream, &check) {
                        log!("health: {e:#}");
                    }
                    drop(slot);
                });
            if let Err(e) = spawned {
                log!("health: cannot start a connection's thread: {e}");
            }
        }
    }
}

/// The connections waiting now, with what their port answers.
fn pending(ports: &Ports) -> Vec<(TcpStream, HealthCheck)> {
    let listeners = ports
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let mut out = Vec::new();
    for (listener, check) in listeners.values() {
        loop {
            match listener.accept() {
                Ok((stream, _)) => out.push((stream, check.clone())),
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) => {
                    log!("health: accept: {e}");
                    break;
                }
            }
        }
    }
    out
}

fn answer(mut stream: TcpStream, check: &HealthCheck) -> anyhow::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(CLIENT_TIMEOUT))?;
    stream.set_write_timeout(Some(CLIENT_TIMEOUT))?;
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

    fn get(port: u16) -> String {
        let mut stream = TcpStream::connect((Ipv4Addr::LOCALHOST, port)).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        stream
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
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
        let text = get(port);
        assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
        assert!(
            text.ends_with(
                "{\"service\":{\"namespace\":\"default\",\"name\":\"web\"},\"localEndpoints\":2}"
            ),
            "{text}"
        );
        server.reconcile(&BTreeMap::from([(port, check(0))]));
        let text = get(port);
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
