//! System operations the plugin needs, behind a trait so that its logic is tested without root.
//! [`IpRoute`] implements them with iproute2, entering the pod's namespace with `nsenter`.

use std::{
    net::Ipv4Addr,
    os::unix::fs::MetadataExt,
    process::{Command, Stdio},
};

use serde::Deserialize;

/// A failed system operation: what was attempted and what the system said.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{op}: {detail}")]
pub struct HostError {
    pub op: String,
    pub detail: String,
}

impl HostError {
    pub fn new(op: impl Into<String>, detail: impl Into<String>) -> Self {
        Self {
            op: op.into(),
            detail: detail.into(),
        }
    }
}

/// What `CNI_NETNS` points at.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NetnsState {
    Missing,
    /// The plugin's own namespace (the node's): never a pod's.
    Own,
    Other,
}

/// A network interface as the kernel reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Link {
    pub name: String,
    pub mac: String,
    pub mtu: u32,
    pub up: bool,
    pub ipv4: Vec<(Ipv4Addr, u8)>,
}

/// An IPv4 route of the main table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Route {
    /// `"default"` or an address with its prefix length (`10.42.1.5/32`).
    pub dst: String,
    pub gateway: Option<Ipv4Addr>,
    pub dev: String,
}

/// The system operations of ADD, DEL, CHECK and GC. "Node" is the plugin's own network
/// namespace; "pod" is the namespace at a `CNI_NETNS` path.
pub trait Host {
    fn netns_state(&self, netns: &str) -> Result<NetnsState, HostError>;
    fn node_link(&self, name: &str) -> Result<Option<Link>, HostError>;
    fn pod_link(&self, netns: &str, name: &str) -> Result<Option<Link>, HostError>;
    /// Creates a veth pair: `host_ifname` in the node namespace, `pod_ifname` in `netns`, both
    /// with `mtu`. Either everything is created or nothing.
    fn create_veth(
        &self,
        netns: &str,
        pod_ifname: &str,
        host_ifname: &str,
        mtu: u32,
    ) -> Result<(), HostError>;
    /// Deletes a node interface (a veth takes its peer with it).
    fn delete_node_link(&self, name: &str) -> Result<(), HostError>;
    fn delete_pod_link(&self, netns: &str, name: &str) -> Result<(), HostError>;
    /// Pod side: `address/32` on `ifname`, `ifname` and `lo` up, `gateway/32` scope link and
    /// the default route via `gateway`.
    fn configure_pod(
        &self,
        netns: &str,
        ifname: &str,
        address: Ipv4Addr,
        gateway: Ipv4Addr,
    ) -> Result<(), HostError>;
    /// Node side: `host_ifname` up and `address/32 dev host_ifname`.
    fn configure_node(&self, host_ifname: &str, address: Ipv4Addr) -> Result<(), HostError>;
    fn pod_routes(&self, netns: &str) -> Result<Vec<Route>, HostError>;
    fn node_routes(&self) -> Result<Vec<Route>, HostError>;
}

/// [`Host`] through the `ip` command of iproute2 (and util-linux `nsenter` for pod namespaces).
#[derive(Clone, Copy, Debug, Default)]
pub struct IpRoute;

impl IpRoute {
    /// Runs `ip ARGS`, in the node namespace or inside `netns`; returns stdout.
    fn ip(&self, netns: Option<&str>, args: &[&str]) -> Result<String, HostError> {
        let mut command = match netns {
            Some(path) => {
                let mut c = Command::new("nsenter");
                c.arg(format!("--net={path}")).arg("ip");
                c
            }
            None => Command::new("ip"),
        };
        command.args(args).stdin(Stdio::null());
        let where_ = netns.map(|p| format!(" in {p}")).unwrap_or_default();
        let op = format!("ip {}{where_}", args.join(" "));
        let output = command.output().map_err(|e| {
            HostError::new(
                &op,
                format!("cannot run it ({e}); are iproute2 and util-linux installed?"),
            )
        })?;
        if output.status.success() {
            Ok(String::from_utf8_lossy(&output.stdout).into_owned())
        } else {
            Err(HostError::new(
                op,
                String::from_utf8_lossy(&output.stderr).trim().to_string(),
            ))
        }
    }

    fn links(&self, netns: Option<&str>) -> Result<Vec<Link>, HostError> {
        // `addr show` lists every link, with its addresses.
        let out = self.ip(netns, &["-json", "addr", "show"])?;
        let raw: Vec<JsonLink> = parse_json(&out, "ip -json addr show")?;
        Ok(raw.into_iter().map(JsonLink::into_link).collect())
    }

    fn routes(&self, netns: Option<&str>) -> Result<Vec<Route>, HostError> {
        let out = self.ip(netns, &["-json", "-4", "route", "show"])?;
        let raw: Vec<JsonRoute> = parse_json(&out, "ip -json route show")?;
        Ok(raw.into_iter().map(JsonRoute::into_route).collect())
    }

    fn require_netns(&self, netns: &str) -> Result<(), HostError> {
        match self.netns_state(netns)? {
            NetnsState::Other => Ok(()),
            NetnsState::Missing => Err(HostError::new(
                format!("enter network namespace {netns}"),
                "it does not exist",
            )),
            NetnsState::Own => Err(HostError::new(
                format!("enter network namespace {netns}"),
                "it is the plugin's own (node) namespace",
            )),
        }
    }
}

impl Host for IpRoute {
    fn netns_state(&self, netns: &str) -> Result<NetnsState, HostError> {
        let Ok(target) = std::fs::metadata(netns) else {
            return Ok(NetnsState::Missing);
        };
        let own = std::fs::metadata("/proc/self/ns/net")
            .map_err(|e| HostError::new("stat /proc/self/ns/net", e.to_string()))?;
        if (target.dev(), target.ino()) == (own.dev(), own.ino()) {
            Ok(NetnsState::Own)
        } else {
            Ok(NetnsState::Other)
        }
    }

    fn node_link(&self, name: &str) -> Result<Option<Link>, HostError> {
        Ok(self.links(None)?.into_iter().find(|l| l.name == name))
    }

    fn pod_link(&self, netns: &str, name: &str) -> Result<Option<Link>, HostError> {
        self.require_netns(netns)?;
        Ok(self
            .links(Some(netns))?
            .into_iter()
            .find(|l| l.name == name))
    }

    fn create_veth(
        &self,
        netns: &str,
        pod_ifname: &str,
        host_ifname: &str,
        mtu: u32,
    ) -> Result<(), HostError> {
        self.require_netns(netns)?;
        let mtu = mtu.to_string();
        self.ip(
            None,
            &[
                "link",
                "add",
                host_ifname,
                "mtu",
                &mtu,
                "type",
                "veth",
                "peer",
                "name",
                pod_ifname,
                "mtu",
                &mtu,
                "netns",
                netns,
            ],
        )
        .map(drop)
    }

    fn delete_node_link(&self, name: &str) -> Result<(), HostError> {
        self.ip(None, &["link", "del", "dev", name]).map(drop)
    }

    fn delete_pod_link(&self, netns: &str, name: &str) -> Result<(), HostError> {
        self.require_netns(netns)?;
        self.ip(Some(netns), &["link", "del", "dev", name])
            .map(drop)
    }

    fn configure_pod(
        &self,
        netns: &str,
        ifname: &str,
        address: Ipv4Addr,
        gateway: Ipv4Addr,
    ) -> Result<(), HostError> {
        self.require_netns(netns)?;
        let ns = Some(netns);
        let addr = format!("{address}/32");
        let gw = gateway.to_string();
        let gw32 = format!("{gateway}/32");
        self.ip(ns, &["link", "set", "dev", "lo", "up"])?;
        self.ip(ns, &["addr", "add", &addr, "dev", ifname])?;
        self.ip(ns, &["link", "set", "dev", ifname, "up"])?;
        self.ip(
            ns,
            &["route", "replace", &gw32, "dev", ifname, "scope", "link"],
        )?;
        self.ip(
            ns,
            &["route", "replace", "default", "via", &gw, "dev", ifname],
        )?;
        Ok(())
    }

    fn configure_node(&self, host_ifname: &str, address: Ipv4Addr) -> Result<(), HostError> {
        let addr = format!("{address}/32");
        self.ip(None, &["link", "set", "dev", host_ifname, "up"])?;
        self.ip(
            None,
            &[
                "route",
                "replace",
                &addr,
                "dev",
                host_ifname,
                "scope",
                "link",
            ],
        )?;
        Ok(())
    }

    fn pod_routes(&self, netns: &str) -> Result<Vec<Route>, HostError> {
        self.require_netns(netns)?;
        self.routes(Some(netns))
    }

    fn node_routes(&self) -> Result<Vec<Route>, HostError> {
        self.routes(None)
    }
}

fn parse_json<T: serde::de::DeserializeOwned>(text: &str, what: &str) -> Result<T, HostError> {
    serde_json::from_str(text)
        .map_err(|e| HostError::new(format!("read the output of {what}"), e.to_string()))
}

#[derive(Deserialize)]
struct JsonLink {
    ifname: String,
    #[serde(default)]
    flags: Vec<String>,
    #[serde(default)]
    mtu: u32,
    address: Option<String>,
    #[serde(default)]
    addr_info: Vec<JsonAddr>,
}

impl JsonLink {
    fn into_link(self) -> Link {
        Link {
            up: self.flags.iter().any(|f| f == "UP"),
            mac: self.address.clone().unwrap_or_default(),
            mtu: self.mtu,
            ipv4: self.ipv4(),
            name: self.ifname,
        }
    }

    fn ipv4(&self) -> Vec<(Ipv4Addr, u8)> {
        self.addr_info
            .iter()
            .filter(|a| a.family.as_deref() == Some("inet"))
            .filter_map(|a| Some((a.local.as_deref()?.parse().ok()?, a.prefixlen?)))
            .collect()
    }
}

#[derive(Deserialize)]
struct JsonAddr {
    family: Option<String>,
    local: Option<String>,
    prefixlen: Option<u8>,
}

#[derive(Deserialize)]
struct JsonRoute {
    dst: String,
    gateway: Option<String>,
    #[serde(default)]
    dev: String,
}

impl JsonRoute {
    fn into_route(self) -> Route {
        // iproute2 prints a host route without its /32.
        let dst = if self.dst == "default" || self.dst.contains('/') {
            self.dst
        } else {
            format!("{}/32", self.dst)
        };
        Route {
            dst,
            gateway: self.gateway.and_then(|g| g.parse().ok()),
            dev: self.dev,
        }
    }
}
