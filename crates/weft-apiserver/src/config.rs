//! What the embedding program chooses: address ranges the Service allocator hands out, how much
//! watch history is kept, how often bookmarks go out.

use std::{fmt, net::Ipv4Addr, net::SocketAddr, ops::RangeInclusive, str::FromStr, time::Duration};

/// An IPv4 prefix such as `10.43.0.0/16`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipv4Cidr {
    pub address: Ipv4Addr,
    pub prefix_len: u8,
}

impl Ipv4Cidr {
    pub fn new(address: Ipv4Addr, prefix_len: u8) -> Result<Self, ConfigError> {
        if prefix_len > 32 {
            return Err(ConfigError::Cidr(format!(
                "{address}/{prefix_len}: prefix length above 32"
            )));
        }
        let cidr = Ipv4Cidr {
            address,
            prefix_len,
        };
        if cidr.network() != u32::from(address) {
            return Err(ConfigError::Cidr(format!(
                "{address}/{prefix_len}: host bits are set"
            )));
        }
        Ok(cidr)
    }

    fn mask(&self) -> u32 {
        u32::MAX
            .checked_shl(32 - u32::from(self.prefix_len))
            .unwrap_or(0)
    }

    pub(crate) fn network(&self) -> u32 {
        u32::from(self.address) & self.mask()
    }

    pub(crate) fn broadcast(&self) -> u32 {
        self.network() | !self.mask()
    }

    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & self.mask() == self.network()
    }
}

impl fmt::Display for Ipv4Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.address, self.prefix_len)
    }
}

impl FromStr for Ipv4Cidr {
    type Err = ConfigError;

    fn from_str(s: &str) -> Result<Self, ConfigError> {
        let bad = || ConfigError::Cidr(format!("{s:?} is not an IPv4 CIDR such as 10.43.0.0/16"));
        let (address, prefix) = s.split_once('/').ok_or_else(bad)?;
        let address: Ipv4Addr = address.parse().map_err(|_| bad())?;
        let prefix_len: u8 = prefix.parse().map_err(|_| bad())?;
        Ipv4Cidr::new(address, prefix_len)
    }
}

/// A configuration the server cannot run with.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("service CIDR: {0}")]
    Cidr(String),
    #[error("service CIDR {0} has fewer than two assignable addresses")]
    CidrTooSmall(Ipv4Cidr),
    #[error("node port range {start}-{end} is empty")]
    NodePortRange { start: u16, end: u16 },
    #[error("history size must be at least 1")]
    HistorySize,
    #[error("starting the server: {0}")]
    Startup(String),
}

/// The server's settings. `Default` is a k3s-like cluster: services in 10.43.0.0/16, node
/// ports 30000-32767, the last 10,000 events of each resource kept for watch resume, a
/// bookmark every minute as the apiserver sends them.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Where Service cluster IPs come from.
    pub service_cidr: Ipv4Cidr,
    /// Where Service node ports (and health check node ports) come from.
    pub node_port_range: RangeInclusive<u16>,
    /// Events kept per resource for watches that resume from a resourceVersion; an older
    /// resourceVersion gets 410 Expired.
    pub history_size: usize,
    /// How often a watch with `allowWatchBookmarks=true` gets a BOOKMARK.
    pub bookmark_interval: Duration,
    /// How long a watch without `timeoutSeconds` lasts (the apiserver picks 30-60 minutes).
    pub default_watch_timeout: Duration,
    /// Events queued for one watch that its client does not read; past this the server closes
    /// that watch (the client resumes from its last resourceVersion), as the apiserver does with
    /// an unresponsive watcher.
    pub watch_queue_limit: usize,
    /// The address `/api` advertises in `serverAddressByClientCIDRs`.
    pub advertise_address: Option<SocketAddr>,
    /// Largest request body accepted (the apiserver's limit is 3 MiB).
    pub max_body_bytes: usize,
    /// `gitVersion` in `/version`.
    pub git_version: String,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            service_cidr: Ipv4Cidr {
                address: Ipv4Addr::new(10, 43, 0, 0),
                prefix_len: 16,
            },
            node_port_range: 30000..=32767,
            history_size: 10_000,
            bookmark_interval: Duration::from_secs(60),
            default_watch_timeout: Duration::from_secs(1800),
            watch_queue_limit: 100_000,
            advertise_address: None,
            max_body_bytes: 3 * 1024 * 1024,
            git_version: "v1.34.0-weft".to_string(),
        }
    }
}

impl ServerConfig {
    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        let cidr = Ipv4Cidr::new(self.service_cidr.address, self.service_cidr.prefix_len)?;
        if cidr.prefix_len > 30 {
            return Err(ConfigError::CidrTooSmall(cidr));
        }
        if self.node_port_range.is_empty() {
            return Err(ConfigError::NodePortRange {
                start: *self.node_port_range.start(),
                end: *self.node_port_range.end(),
            });
        }
        if self.history_size == 0 {
            return Err(ConfigError::HistorySize);
        }
        Ok(())
    }
}
