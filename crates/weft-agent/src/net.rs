//! What the agent needs to know of the node's interfaces, asked in the calling thread's network
//! namespace. Through rtnetlink (`ip -json`), not /sys/class/net: sysfs shows the namespace it
//! was mounted in, which is not the node's when the agent entered it with setns.

use std::{net::Ipv4Addr, process::Command};

use anyhow::{Context as _, anyhow, bail};

pub trait NetInfo {
    fn ifindex(&self, ifname: &str) -> anyhow::Result<u32>;
    fn mac(&self, ifname: &str) -> anyhow::Result<[u8; 6]>;
    fn mtu(&self, ifname: &str) -> anyhow::Result<u32>;
    /// The first IPv4 address of the interface.
    fn ipv4(&self, ifname: &str) -> anyhow::Result<Option<Ipv4Addr>>;
}

/// The interfaces of the namespace the agent runs in.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemNet;

fn ip_json(args: &[&str]) -> anyhow::Result<serde_json::Value> {
    let out = Command::new("ip")
        .arg("-json")
        .args(args)
        .output()
        .with_context(|| format!("running ip {}", args.join(" ")))?;
    if !out.status.success() {
        bail!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    serde_json::from_slice(&out.stdout).with_context(|| format!("output of ip {}", args.join(" ")))
}

fn link(ifname: &str) -> anyhow::Result<serde_json::Value> {
    let links = ip_json(&["link", "show", "dev", ifname])?;
    links
        .get(0)
        .cloned()
        .ok_or_else(|| anyhow!("no interface {ifname}"))
}

fn u32_field(value: &serde_json::Value, field: &str, ifname: &str) -> anyhow::Result<u32> {
    value
        .get(field)
        .and_then(serde_json::Value::as_u64)
        .and_then(|v| u32::try_from(v).ok())
        .ok_or_else(|| anyhow!("interface {ifname} has no {field}"))
}

impl NetInfo for SystemNet {
    fn ifindex(&self, ifname: &str) -> anyhow::Result<u32> {
        u32_field(&link(ifname)?, "ifindex", ifname)
    }

    fn mac(&self, ifname: &str) -> anyhow::Result<[u8; 6]> {
        let link = link(ifname)?;
        let address = link
            .get("address")
            .and_then(serde_json::Value::as_str)
            .ok_or_else(|| anyhow!("interface {ifname} has no MAC address"))?;
        parse_mac(address)
    }

    fn mtu(&self, ifname: &str) -> anyhow::Result<u32> {
        u32_field(&link(ifname)?, "mtu", ifname)
    }

    fn ipv4(&self, ifname: &str) -> anyhow::Result<Option<Ipv4Addr>> {
        let addrs = ip_json(&["-4", "addr", "show", "dev", ifname])?;
        Ok(addrs
            .get(0)
            .and_then(|l| l.get("addr_info"))
            .and_then(serde_json::Value::as_array)
            .and_then(|infos| {
                infos
                    .iter()
                    .filter_map(|i| i.get("local").and_then(serde_json::Value::as_str))
                    .find_map(|a| a.parse().ok())
            }))
    }
}

/// `aa:bb:cc:dd:ee:ff` (case-insensitive).
pub fn parse_mac(text: &str) -> anyhow::Result<[u8; 6]> {
    let bad = || anyhow!("`{text}` is not a MAC address");
    let mut out = [0u8; 6];
    let mut parts = text.trim().split(':');
    for byte in &mut out {
        let part = parts.next().ok_or_else(bad)?;
        if part.len() != 2 {
            return Err(bad());
        }
        *byte = u8::from_str_radix(part, 16).map_err(|_| bad())?;
    }
    if parts.next().is_some() {
        return Err(bad());
    }
    Ok(out)
}

pub fn format_mac(mac: &[u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn macs_parse_strictly_and_format_back() {
        let mac = parse_mac("02:AB:0c:00:00:ff").unwrap();
        assert_eq!(mac, [0x02, 0xab, 0x0c, 0, 0, 0xff]);
        assert_eq!(format_mac(&mac), "02:ab:0c:00:00:ff");
        for bad in [
            "",
            "02:ab:0c:00:00",
            "02:ab:0c:00:00:ff:11",
            "2:ab:0c:00:00:ff",
            "zz:ab:0c:00:00:ff",
        ] {
            assert!(parse_mac(bad).is_err(), "{bad}");
        }
    }
}
