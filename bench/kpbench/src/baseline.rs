//! The kube-proxy baseline lab: a hand-wired lab of weft-lab's netns toolkit — pods routed by
//! the kernel, no Weft datapath, no agent — with the rules kube-proxy writes at start
//! ([`setup_nodes`]); the bench then gives it Services through [`NodeProxy`](crate::kube_proxy::NodeProxy).

use anyhow::{Context as _, ensure};
use weft_lab::{LabSpec, Topology, lifecycle::set_sysctls, wiring::Sysctl};

use crate::kube_proxy::{ProxyMode, setup_nodes};

/// Brings up lab `name`: `nodes` nodes with `pods_per_node` kernel-routed pods each, and
/// kube-proxy's start-up rules in `mode`. On failure nothing of the lab is left behind; `weft lab
/// down --name NAME` removes it like any lab.
pub fn up(name: &str, mode: ProxyMode, nodes: u32, pods_per_node: u32) -> anyhow::Result<Topology> {
    ensure!(
        pods_per_node > 0,
        "a baseline lab needs hand-wired pods (1 or more per node): without Weft, nothing else \
         wires them"
    );
    let topology = weft_lab::up(&LabSpec::with_size(name, nodes, pods_per_node))?;
    if let Err(e) = prepare(&topology, mode) {
        let _ = weft_lab::down(name);
        return Err(e.context(format!("bringing the {mode} baseline of lab {name} up")));
    }
    Ok(topology)
}

fn prepare(topology: &Topology, mode: ProxyMode) -> anyhow::Result<()> {
    set_sysctls(&route_localnet(topology)).context("sysctls")?;
    setup_nodes(topology, mode).with_context(|| format!("kube-proxy ({mode})"))
}

/// What kube-proxy sets at start for NodePorts on 127.0.0.1 (its default), on every node.
pub fn route_localnet(topology: &Topology) -> Vec<Sysctl> {
    topology
        .nodes
        .iter()
        .map(|node| Sysctl {
            netns: node.netns.clone(),
            key: "net.ipv4.conf.all.route_localnet",
            value: "1",
            optional: false,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_node_routes_localnet_as_kube_proxy_sets_it() {
        let t = weft_lab::plan(&LabSpec::with_size("base", 2, 2)).expect("valid");
        let nodes: Vec<(String, &str)> = route_localnet(&t)
            .into_iter()
            .map(|s| (s.netns, s.value))
            .collect();
        assert_eq!(
            nodes,
            [
                ("base-vps1".to_string(), "1"),
                ("base-vps2".to_string(), "1")
            ]
        );
    }

    #[test]
    fn a_baseline_without_pods_is_refused_before_anything_is_made() {
        let err = up("nopods", ProxyMode::Nftables, 2, 0).expect_err("no pods");
        assert!(err.to_string().contains("hand-wired pods"), "{err}");
    }
}
